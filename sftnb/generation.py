"""A small generation engine for probing and evaluation: many short prompts, many samples, few new tokens.

Public API (all work on token-id lists; callers build prompts, BOS included if the model wants one)::

    generate(model, prompts, *, n=1, temperature=0.0, max_new_tokens=32, eos_token_ids=(), pad_token_id=None,
             seed=0, batch_tokens=16384, progress=True, desc="generate") -> list[list[list[int]]]
    greedy(model, prompts, **kw) -> list[list[int]]
    decode(tokenizer, completions) -> list[list[str]]
    first_token_logits(model, prompts, batch_tokens=16384, pad_token_id=None) -> Tensor [N, V] float32 (CPU)
    continuation_logprobs(model, prompts, continuations, temperature=1.0, batch_tokens=16384, ...) -> list[list[float]]
    lead_in_probs(model, prompts, watch, n_lead, temperature=1.0, ...) -> list[dict]

What makes ``generate`` faster than ``model.generate(do_sample=True, num_return_sequences=n)`` on this workload:

- **prefix sharing**: a batch of B prompts is prefilled once; its KV cache is then repeated to the B*n sample rows;
- **shared prompt prefixes are prefilled once**: the tokens every prompt of a batch starts with (the
  ``<|question|>`` marker and template words of QA prompts: ~25 % of the prefill of a length-sorted evaluation
  batch) go through the model as one row, whose KV cache the batch then shares;
- **prefill keeps one position's logits** (``logits_to_keep=1``): no [B, L, V] tensor;
- **preallocated KV cache**: plain full-attention layers write new keys/values in place into a buffer sized for
  prompt + max_new_tokens (``DynamicCache`` re-concatenates the whole cache at every step); other layer kinds
  (sliding window, ...) keep their own Hugging Face implementation;
- **cheap exact sampling**: inverse-CDF sampling with ONE uniform per row and step, computed from a counter-based
  hash (see *Determinism*), over exp((logits - max)/T) in float32 with a two-level (block) cumulative sum. It is
  exactly a draw from softmax(logits / T), needs no [rows, V] random tensor (Gumbel-max needs one: on this CPU
  drawing it costs ~5x more than the sampling itself) and no ``torch.multinomial``;
- **finished rows leave the batch**: every ``CHECK_EVERY`` steps on a GPU (every step on a CPU, where the check
  costs no synchronisation) rows that emitted an EOS are dropped from the
  inputs and the cache (the only host synchronisation of the decode loop, so GPUs are not stalled per token);
- prompts are **sorted by length** (little padding), results are returned in the caller's order.

Batching: a batch of B prompts of longest length L costs ``B * n * (L + max_new_tokens)`` token slots (its KV cache
at the end of decoding); batches are filled, in length order, up to ``batch_tokens`` (a single prompt always
forms a batch even when it alone exceeds the budget). On a GPU use a large budget (e.g. 2**19 for a 135M model).

Determinism: the uniform that picks token t of sample j of a prompt is a hash of (seed, the prompt's token ids,
the prompt's occurrence number among identical prompts in the call, j, t). Samples therefore do not depend on
batch_tokens, on the other prompts of the call, nor on their order -- up to floating-point differences between
batch shapes, which can move a draw that lands within ~1e-6 (fp32) of a CDF boundary. Same seed + same call gives
identical samples; temperature 0 (greedy) uses argmax and no randomness.

Any Hugging Face causal LM works: batches are left-padded and the model gets an attention mask and explicit
position ids; nothing model-specific is touched.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

CHECK_EVERY = 4            # decode steps between "who finished?" checks on a GPU (each one is a host sync)
MIN_SHARED = 4             # a batch whose prompts all start with at least this many equal tokens prefills them once
_BLOCK = 256               # block width of the two-level cumulative sum used for sampling
_LOGITS_BUDGET = 1 << 25   # continuation_logprobs: at most this many logit entries per batch (~128 MB in fp32)


# ------------------------------------------------------------------------------------------------ helpers
def _device(model) -> torch.device:
    return next(model.parameters()).device


def _pad_id(model, pad_token_id):
    if pad_token_id is not None:
        return int(pad_token_id)
    pid = getattr(model.config, "pad_token_id", None)
    if isinstance(pid, (list, tuple)):
        pid = pid[0] if pid else None
    return 0 if pid is None else int(pid)


def _cache_kwarg(model) -> str:
    """The forward() keyword for the KV cache: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _check_prompts(prompts) -> None:
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty (the engine needs at least one token, e.g. BOS)")


def left_pad(seqs: Sequence[Sequence[int]], pad: int, device="cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask and position_ids (0 at the first real token) of a left-padded batch: every
    row's last token sits in the last column (what generation and the answer-only SFT loss both rely on)."""
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), pad, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, width - len(s):] = s
        mask[i, width - len(s):] = 1
    pos = np.maximum(mask.cumsum(-1) - 1, 0)
    return tuple(torch.from_numpy(a).to(device) for a in (ids, mask, pos))


def _greedy_batches(order: Sequence[int], cost: Callable[[int, int], float], budget: float) -> list[list[int]]:
    batches: list[list[int]] = []
    batch: list[int] = []
    for i in order:
        if batch and cost(len(batch) + 1, i) > budget:
            batches.append(batch)
            batch = []
        batch.append(i)
    if batch:
        batches.append(batch)
    return batches


def _batches(order: Sequence[int], cost: Callable[[int, int], float], budget: float) -> list[list[int]]:
    """Consecutive runs of ``order`` (indices sorted by length); ``cost(rows, i)`` is the cost of a batch of
    ``rows`` items whose last (longest) item is ``i``. Batches are filled greedily up to ``budget``; when the same
    number of batches can hold equal shares of the items, those are used instead (no small, inefficient tail
    batch)."""
    greedy = _greedy_batches(order, cost, budget)
    k = len(greedy)
    if k <= 1:
        return greedy
    size = -(-len(order) // k)
    even = [list(order[s:s + size]) for s in range(0, len(order), size)]
    if len(even) == k and all(cost(len(b), b[-1]) <= budget for b in even):
        return even
    return greedy


# ----------------------------------------------------------------------------- counter-based uniforms
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x + np.uint64(0x9E3779B97F4A7C15)) & _M64
        x = ((x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _M64
        x = ((x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _M64
        return x ^ (x >> np.uint64(31))


def _prompt_keys(prompts: Sequence[Sequence[int]], seed: int) -> np.ndarray:
    """One uint64 per prompt: hash of (seed, token ids, occurrence number among identical prompts)."""
    seen: dict[bytes, int] = {}
    keys = np.empty(len(prompts), dtype=np.uint64)
    for i, p in enumerate(prompts):
        raw = np.asarray(p, dtype=np.int64).tobytes()
        occ = seen.get(raw, 0)
        seen[raw] = occ + 1
        h = hashlib.blake2b(raw, digest_size=8, key=f"{seed}:{occ}".encode()).digest()
        keys[i] = np.frombuffer(h, dtype=np.uint64)[0]
    return keys


def _uniforms(prompt_keys: np.ndarray, n: int, steps: int) -> torch.Tensor:
    """[len(prompt_keys) * n, steps] float32 uniforms in [0, 1), row = (prompt, sample), column = step."""
    with np.errstate(over="ignore"):
        rows = _mix64(np.repeat(prompt_keys, n) ^ _mix64(np.tile(np.arange(n, dtype=np.uint64), len(prompt_keys))))
        cells = _mix64(rows[:, None] ^ _mix64(np.arange(steps, dtype=np.uint64) + np.uint64(0x5851F42D4C957F2D))[None])
    return torch.from_numpy((cells >> np.uint64(40)).astype(np.float32) * np.float32(2.0 ** -24))


def _sample(logits: torch.Tensor, temperature: float, u: torch.Tensor | None) -> torch.Tensor:
    """Next token per row: argmax when temperature <= 0, else an exact draw from softmax(logits / T) by inverse
    CDF with the row's uniform ``u`` (float32 in [0, 1)); two-level cumulative sum over blocks of _BLOCK."""
    if temperature <= 0:
        return logits.argmax(-1)
    rows, vocab = logits.shape
    x = logits.float() if logits.dtype != torch.float32 else logits.clone()
    p = x.sub_(x.amax(-1, keepdim=True)).mul_(1.0 / temperature).exp_()
    nb = -(-vocab // _BLOCK)
    if nb * _BLOCK != vocab:
        p = torch.nn.functional.pad(p, (0, nb * _BLOCK - vocab))
    p = p.view(rows, nb, _BLOCK)
    cum_blocks = p.sum(-1).cumsum(-1)                                          # [rows, nb]
    total = cum_blocks[:, -1:]
    zero = torch.zeros_like(total)
    target = torch.minimum(u.to(total)[:, None] * total, torch.nextafter(total, zero))   # < total
    b = torch.searchsorted(cum_blocks, target, right=True).clamp_max(nb - 1)  # first block with cum > target
    before = torch.where(b > 0, cum_blocks.gather(1, (b - 1).clamp_min(0)), zero)
    inner = p[torch.arange(rows, device=p.device), b[:, 0]].cumsum(-1)        # [rows, _BLOCK]
    t = (target - before).clamp_min(0)
    t = torch.minimum(t, torch.nextafter(inner[:, -1:], zero))                 # rounding guard: stay in block
    j = torch.searchsorted(inner, t, right=True).clamp_max(_BLOCK - 1)        # first token with cum > t (p > 0)
    return (b * _BLOCK + j)[:, 0]


def _check_every(device: torch.device) -> int:
    """Decode steps between EOS compactions: every step on a CPU (nothing to synchronise), CHECK_EVERY on a GPU."""
    return 1 if device.type == "cpu" else CHECK_EVERY


def _shared_prefix(prompts: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every prompt shares, leaving each at least one token of its own."""
    limit = min(len(p) for p in prompts) - 1
    first, n = prompts[0], 0
    while n < limit and all(p[n] == first[n] for p in prompts):
        n += 1
    return n


def _plain_layers(cache) -> bool:
    """Only plain full-attention cache layers are shared this way (sliding windows keep their own logic)."""
    from transformers.cache_utils import DynamicLayer
    return all(type(layer) is DynamicLayer for layer in cache.layers)


# ------------------------------------------------------------------------------------ KV cache layer
def _cache_layer_classes():
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        """A full-attention cache layer with a preallocated buffer: new keys/values are written in place and the
        layer returns views of the filled part, so a decode step does not copy the whole cache."""

        def __init__(self, keys: torch.Tensor, values: torch.Tensor, repeats: int, capacity: int):
            super().__init__()
            b, h, length, _ = keys.shape
            capacity = max(capacity, length)
            self.device = keys.device
            self.buf_k = keys.new_empty((b * repeats, h, capacity, keys.shape[-1]))
            self.buf_v = values.new_empty((b * repeats, values.shape[1], capacity, values.shape[-1]))
            self.buf_k.view(b, repeats, *self.buf_k.shape[1:])[:, :, :, :length] = keys[:, None]
            self.buf_v.view(b, repeats, *self.buf_v.shape[1:])[:, :, :, :length] = values[:, None]
            self.length = length
            self.is_initialized = True
            self._views()

        def _views(self):
            self.keys = self.buf_k[:, :, :self.length]
            self.values = self.buf_v[:, :, :self.length]

        def update(self, key_states, value_states, *args, **kwargs):
            end = self.length + key_states.shape[-2]
            if end > self.buf_k.shape[2]:                         # out of room: grow (not expected)
                grow = max(end - self.buf_k.shape[2], 16)
                self.buf_k = torch.cat([self.buf_k, self.buf_k.new_empty((*self.buf_k.shape[:2], grow,
                                                                            self.buf_k.shape[3]))], 2)
                self.buf_v = torch.cat([self.buf_v, self.buf_v.new_empty((*self.buf_v.shape[:2], grow,
                                                                            self.buf_v.shape[3]))], 2)
            self.buf_k[:, :, self.length:end] = key_states
            self.buf_v[:, :, self.length:end] = value_states
            self.length = end
            self._views()
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            self.buf_k = self.buf_k.index_select(0, indices)
            self.buf_v = self.buf_v.index_select(0, indices)
            self._views()

        def batch_repeat_interleave(self, repeats: int) -> None:
            self.buf_k = self.buf_k.repeat_interleave(repeats, 0)
            self.buf_v = self.buf_v.repeat_interleave(repeats, 0)
            self._views()

        def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
            self.batch_select_indices(beam_idx.to(self.device))

        def crop(self, tokens_to_remove: int) -> None:
            if tokens_to_remove < 0:
                self.length = max(0, self.length + tokens_to_remove)
                self._views()

        def reset(self) -> None:
            self.length = 0
            self._views()

    return DynamicLayer, PreallocatedLayer


def _expand_cache(cache, n: int, capacity: int) -> None:
    """After prefill: repeat every layer's rows n times (prompt -> its samples) and swap plain full-attention
    layers for preallocated ones with room for ``capacity`` positions."""
    DynamicLayer, PreallocatedLayer = _cache_layer_classes()
    for i, layer in enumerate(cache.layers):
        if type(layer) is DynamicLayer and layer.is_initialized and layer.keys is not None and layer.keys.dim() == 4:
            cache.layers[i] = PreallocatedLayer(layer.keys, layer.values, n, capacity)
        elif n > 1 and hasattr(layer, "batch_repeat_interleave"):
            layer.batch_repeat_interleave(n)


def _select_cache(cache, keep: torch.Tensor) -> None:
    for layer in cache.layers:
        if hasattr(layer, "batch_select_indices"):
            layer.batch_select_indices(keep)


# ------------------------------------------------------------------------------------------- generate
@dataclass
class StopRule:
    """Ends a sample as soon as a caller's condition holds, exactly (the mastery probe: "the text contains the
    answer"). ``boundary`` [V] marks tokens that begin with a non-word character: before such a token the text's
    last word is complete, so a whole-word match found then cannot be undone by later tokens. At those points
    ``done(prompt_index, tokens_so_far)`` is asked; a finished sample is cut there and leaves the batch."""
    boundary: torch.Tensor
    done: Callable[[int, list[int]], bool]


@torch.inference_mode()
def _generate_batch(model, prompts, n, temperature, max_new_tokens, eos, pad, uniforms, stop=None, owners=None):
    from transformers import DynamicCache

    dev = _device(model)
    cache = DynamicCache(config=model.config)
    ckw = _cache_kwarg(model)
    share = _shared_prefix(prompts)
    if share >= MIN_SHARED and len(prompts) > 1 and _plain_layers(cache):
        # the common prefix once (one row), its cache repeated to every prompt, then each prompt's own tokens,
        # left-padded after it: the padding sits between prefix and suffix, masked out; positions stay exact
        pre = torch.tensor([prompts[0][:share]], dtype=torch.long, device=dev)
        model(input_ids=pre, position_ids=torch.arange(share, device=dev)[None], use_cache=True,
              logits_to_keep=1, **{ckw: cache})
        for layer in cache.layers:
            layer.batch_repeat_interleave(len(prompts))
        ids, smask, spos = left_pad([p[share:] for p in prompts], pad, dev)
        mask = torch.cat([smask.new_ones((len(prompts), share)), smask], dim=1)
        pos = spos + share
    else:
        ids, mask, pos = left_pad(prompts, pad, dev)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                **{ckw: cache})
    logits = out.logits[:, -1]
    width = mask.shape[1]
    _expand_cache(cache, n, width + max_new_tokens)
    if n > 1:
        logits = logits.repeat_interleave(n, 0)
        mask = mask.repeat_interleave(n, 0)
        pos = pos.repeat_interleave(n, 0)
    rows = logits.shape[0]
    # the whole attention mask for every step, sliced per step (new tokens are always attended)
    mask = torch.cat([mask, mask.new_ones((rows, max_new_tokens))], dim=1)
    last_pos = pos[:, -1]
    alive = torch.arange(rows, device=dev)                   # original row of each live row
    tokens = torch.full((rows, max_new_tokens), pad, dtype=torch.long, device=dev)
    lengths = torch.full((rows,), max_new_tokens, dtype=torch.long, device=dev)   # index of the first EOS
    eos_t = torch.tensor(sorted(eos), dtype=torch.long, device=dev) if eos else None
    done = torch.zeros(rows, dtype=torch.bool, device=dev)
    check_every = _check_every(dev)
    u_all = uniforms.to(dev) if uniforms is not None else None
    boundary = stop.boundary.to(dev) if stop is not None else None
    for step in range(max_new_tokens):
        nxt = _sample(logits, temperature, u_all[alive, step] if u_all is not None else None)
        tokens[alive, step] = nxt
        if eos_t is not None:
            hit = torch.isin(nxt, eos_t) & ~done
            lengths[alive] = torch.where(hit, step, lengths[alive])
            done = done | hit
        if step == max_new_tokens - 1:
            break
        if stop is not None and step and step % check_every == check_every - 1:
            for r in (boundary[nxt] & ~done).nonzero().squeeze(-1).tolist():   # host sync: CPU, or every few steps
                row = int(alive[r])
                if stop.done(owners[row // n], tokens[row, :step].tolist()):
                    done[r] = True
                    lengths[row] = step
        if (eos_t is not None or stop is not None) and step % check_every == check_every - 1:
            keep = (~done).nonzero().squeeze(-1)               # host sync, once every check_every steps
            if keep.numel() == 0:
                break
            if keep.numel() < done.numel():                    # compact: finished rows leave batch and cache
                _select_cache(cache, keep)
                alive, nxt, mask, last_pos, done = alive[keep], nxt[keep], mask[keep], last_pos[keep], done[keep]
        last_pos = last_pos + 1
        out = model(input_ids=nxt[:, None], attention_mask=mask[:, :width + step + 1],
                    position_ids=last_pos[:, None], use_cache=True, **{ckw: cache})
        logits = out.logits[:, -1]
    tokens, lengths = tokens.cpu(), lengths.cpu().tolist()
    return [tokens[r, :lengths[r]].tolist() for r in range(rows)]


def generate(model, prompts: Sequence[Sequence[int]], *, n: int = 1, temperature: float = 0.0,
             max_new_tokens: int = 32, eos_token_ids: Sequence[int] | int | None = (),
             pad_token_id: int | None = None, seed: int = 0, batch_tokens: int = 16384, progress: bool = True,
             desc: str = "generate", stop: StopRule | None = None) -> list[list[list[int]]]:
    """For each prompt (token ids), ``n`` completions as token-id lists, cut before the first EOS (the EOS itself
    is dropped). ``temperature`` 0 is greedy decoding (then the ``n`` completions are identical; use n=1).
    Batches hold about ``batch_tokens`` token slots (rows x (longest prompt + max_new_tokens)); see the module
    docstring for batching and determinism."""
    if n < 1 or max_new_tokens < 1:
        raise ValueError("n and max_new_tokens must be at least 1")
    prompts = [list(map(int, p)) for p in prompts]
    _check_prompts(prompts)
    if isinstance(eos_token_ids, int):
        eos_token_ids = (eos_token_ids,)
    eos = {int(e) for e in (eos_token_ids or ()) if e is not None}
    pad = _pad_id(model, pad_token_id)
    lengths = [len(p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (lengths[i], i))
    keys = _prompt_keys(prompts, seed) if temperature > 0 else None
    results: list[list[list[int]]] = [[] for _ in prompts]
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress, leave=False)
    cost = lambda rows, i: rows * n * (lengths[i] + max_new_tokens)   # noqa: E731
    for batch in _batches(order, cost, batch_tokens):
        uniforms = _uniforms(keys[batch], n, max_new_tokens) if keys is not None else None
        outs = _generate_batch(model, [prompts[i] for i in batch], n, temperature, max_new_tokens, eos, pad,
                               uniforms, stop, batch)
        for j, i in enumerate(batch):
            results[i] = outs[j * n:(j + 1) * n]
        bar.update(len(batch))
    bar.close()
    return results


def greedy(model, prompts: Sequence[Sequence[int]], **kw) -> list[list[int]]:
    """Greedy decoding (temperature 0, one completion per prompt): the tokens ``model.generate(do_sample=False)``
    produces, cut before the first EOS. Keyword arguments as for ``generate`` (except n/temperature)."""
    return [c[0] for c in generate(model, prompts, n=1, temperature=0.0, **kw)]


def decode(tokenizer, completions: Sequence[Sequence[Sequence[int]]]) -> list[list[str]]:
    """Texts of ``generate``'s output (same nesting), special tokens skipped."""
    return [tokenizer.batch_decode(list(per_prompt), skip_special_tokens=True) if per_prompt else []
            for per_prompt in completions]


# ------------------------------------------------------------------------------------------- scoring
@torch.inference_mode()
def first_token_logits(model, prompts: Sequence[Sequence[int]], batch_tokens: int = 16384,
                       pad_token_id: int | None = None, progress: bool = False) -> torch.Tensor:
    """[N, V] float32 on the CPU: the next-token logits after each prompt (one padded forward per batch of about
    ``batch_tokens`` tokens, only the last position projected on the vocabulary)."""
    prompts = [list(map(int, p)) for p in prompts]
    _check_prompts(prompts)
    if not prompts:
        vocab = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None \
            else model.config.vocab_size
        return torch.zeros((0, vocab), dtype=torch.float32)
    pad = _pad_id(model, pad_token_id)
    lengths = [len(p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (lengths[i], i))
    out: torch.Tensor | None = None
    bar = tqdm(total=len(prompts), desc="logits", disable=not progress, leave=False)
    for batch in _batches(order, lambda rows, i: rows * lengths[i], batch_tokens):
        ids, mask, pos = left_pad([prompts[i] for i in batch], pad, _device(model))
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                       logits_to_keep=1).logits[:, -1].float().cpu()
        if out is None:
            out = torch.empty((len(prompts), logits.shape[-1]), dtype=torch.float32)
        out[torch.tensor(batch)] = logits
        bar.update(len(batch))
    bar.close()
    return out


@torch.inference_mode()
def lead_in_probs(model, prompts: Sequence[Sequence[int]], watch: Sequence[Sequence[int]], n_lead: int,
                  temperature: float = 1.0, exclude: Sequence[int] = (), batch_tokens: int = 16384,
                  pad_token_id: int | None = None, progress: bool = False) -> list[dict]:
    """For each prompt: the tempered next-token probabilities of the ``watch`` tokens (e.g. an answer's first
    tokens), the ``n_lead`` most likely other first tokens ("lead-ins", ``exclude`` and the watched ones left
    out) with their probabilities, and the probabilities of the watched tokens right after each lead-in.

    Each batch is prefilled once; its KV cache is then repeated to the lead-ins, which take one decode step
    together: the cost is about one teacher-forced pass over the prompts, whatever ``n_lead``.
    Returns ``[{"start": [p(watch_j)], "leads": [(token, p)], "after": [[p(watch_j | lead)] per lead]}]``."""
    from transformers import DynamicCache

    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    prompts = [list(map(int, p)) for p in prompts]
    _check_prompts(prompts)
    pad, dev = _pad_id(model, pad_token_id), _device(model)
    vocab = model.config.get_text_config().vocab_size
    lengths = [len(p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (lengths[i], i))
    rows_cap = max(1, _LOGITS_BUDGET // (max(1, n_lead) * vocab))        # bound the [rows x n_lead, V] logits
    out: list[dict] = [{} for _ in prompts]
    ckw = _cache_kwarg(model)
    excluded = torch.tensor(sorted(set(map(int, exclude))), dtype=torch.long, device=dev)
    bar = tqdm(total=len(prompts), desc="lead-ins", disable=not progress, leave=False)
    for big in _batches(order, lambda rows, i: rows * (lengths[i] + 1), batch_tokens):
        for s in range(0, len(big), rows_cap):
            batch = big[s:s + rows_cap]
            ids, mask, pos = left_pad([prompts[i] for i in batch], pad, dev)
            cache = DynamicCache(config=model.config)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                           logits_to_keep=1, **{ckw: cache}).logits[:, -1].float()
            probs = (logits / temperature).softmax(-1)
            blocked = probs.clone()
            if excluded.numel():
                blocked[:, excluded] = -1
            for j, i in enumerate(batch):
                if watch[i]:
                    blocked[j, torch.tensor(list(watch[i]), device=dev)] = -1
            p_lead, leads = blocked.topk(n_lead, dim=-1) if n_lead else (blocked[:, :0], blocked[:, :0].long())
            for j, i in enumerate(batch):
                w = torch.tensor(list(watch[i]), dtype=torch.long, device=dev)
                out[i] = {"start": probs[j, w].tolist() if len(w) else [],
                          "leads": list(zip(leads[j].tolist(), p_lead[j].tolist())), "after": []}
            if n_lead:
                for layer in cache.layers:
                    layer.batch_repeat_interleave(n_lead)
                step_mask = torch.cat([mask, mask.new_ones((len(batch), 1))], 1).repeat_interleave(n_lead, 0)
                step_pos = (pos[:, -1:] + 1).repeat_interleave(n_lead, 0)
                after = model(input_ids=leads.reshape(-1, 1), attention_mask=step_mask, position_ids=step_pos,
                              use_cache=True, logits_to_keep=1, **{ckw: cache}).logits[:, -1].float()
                after = (after / temperature).softmax(-1).view(len(batch), n_lead, -1)
                for j, i in enumerate(batch):
                    w = torch.tensor(list(watch[i]), dtype=torch.long, device=dev)
                    out[i]["after"] = after[j][:, w].tolist() if len(w) else [[] for _ in range(n_lead)]
            bar.update(len(batch))
    bar.close()
    return out


@torch.inference_mode()
def continuation_logprobs(model, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[Sequence[int]]],
                          temperature: float = 1.0, batch_tokens: int = 16384, progress: bool = False,
                          pad_token_id: int | None = None) -> list[list[float]]:
    """For each prompt and each of its candidate continuations (token-id lists): the teacher-forced
    Σ_t log softmax(logits_t / temperature)[c_t] over the continuation's tokens (0.0 for an empty continuation).
    All (prompt, continuation) pairs go through left-padded batches of about ``batch_tokens`` tokens; only the
    last (longest continuation + 1) positions are projected on the vocabulary (``logits_to_keep``), so any causal
    LM's own head (soft-capping, scaling) applies."""
    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    if len(continuations) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuation lists")
    prompts = [list(map(int, p)) for p in prompts]
    _check_prompts(prompts)
    pad = _pad_id(model, pad_token_id)
    dev = _device(model)
    vocab = model.config.get_text_config().vocab_size
    pairs = [(pi, ci) for pi, conts in enumerate(continuations) for ci in range(len(conts)) if len(conts[ci])]
    conts = [list(map(int, continuations[pi][ci])) for pi, ci in pairs]
    seqs = [prompts[pi] + c for (pi, _), c in zip(pairs, conts)]
    lengths = [len(s) for s in seqs]
    order = sorted(range(len(seqs)), key=lambda i: (lengths[i], len(conts[i]), i))
    scores = np.zeros(len(seqs), dtype=np.float64)

    def cost(rows, i):      # padded tokens of the batch
        return rows * lengths[i]

    bar = tqdm(total=len(seqs), desc="score", disable=not progress, leave=False)
    for big in _batches(order, cost, batch_tokens):
        # split further so the kept logits stay within _LOGITS_BUDGET entries
        per_row = (max(len(conts[i]) for i in big) + 1) * vocab
        step = max(1, _LOGITS_BUDGET // per_row)
        for s in range(0, len(big), step):
            batch = big[s:s + step]
            ids, mask, pos = left_pad([seqs[i] for i in batch], pad, dev)
            keep = max(len(conts[i]) for i in batch) + 1
            keep = min(keep, ids.shape[1])
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False,
                           logits_to_keep=keep).logits                   # [B, keep, V]: the last `keep` positions
            rows, cols, targets, owner = [], [], [], []
            for j, i in enumerate(batch):
                c = conts[i]
                first = keep - 1 - len(c)          # kept column predicting c[0] (left padding: seq ends the row)
                rows.extend([j] * len(c))
                cols.extend(range(first, first + len(c)))
                targets.extend(c)
                owner.extend([i] * len(c))
            sel = logits[torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)].float()
            lp = (sel / temperature).log_softmax(-1).gather(-1, torch.tensor(targets, device=dev)[:, None])[:, 0]
            np.add.at(scores, np.asarray(owner), lp.double().cpu().numpy())
            bar.update(len(batch))
    bar.close()
    result: list[list[float]] = [[0.0] * len(c) for c in continuations]
    for (pi, ci), v in zip(pairs, scores.tolist()):
        result[pi][ci] = v
    return result
