"""A small generation engine for probing and evaluation: many short prompts, many samples, few new tokens.

Public API (all work on token-id lists; callers build prompts, BOS included if the model wants one)::

    generate(model, prompts, *, n=1, temperature=0.0, max_new_tokens=32, eos_token_ids=(), pad_token_id=None,
             seed=0, batch_tokens=16384, progress=True, desc="generate") -> list[list[list[int]]]
    greedy(model, prompts, **kw) -> list[list[int]]
    decode(tokenizer, completions) -> list[list[str]]

(Teacher-forced scoring, without sampling, is in ``sftnb.lm.scoring``; batching and padding in ``sftnb.lm.batching``.)

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
  costs no synchronisation) rows that emitted an EOS are dropped from the inputs and the cache (the only host
  synchronisation of the decode loop, so GPUs are not stalled per token);
- prompts are **sorted by length** (little padding), results are returned in the caller's order;
- **on CUDA, a static KV cache and CUDA graphs** (``static="auto"``, the default; ``kv_cache.static_cache``): each
  decode step is one graph replay instead of an eager forward's kernel launches. Graphs (and torch.compile with
  ``dynamic=False``) are made once per shape, so a static call pads every prompt to its width (rounded up to 8)
  and every batch to a power of two of rows (``_static_groups``, ``_static_batches``): one or two shapes a call,
  not one a batch, and few across a run's calls. Rows stay in a static batch (finished ones are masked, not
  dropped). Where compiling or capturing fails, or a run's shapes pass ``kv_cache.RECOMPILE_LIMIT``, the call
  warns and decodes dynamically.
- **the stop rule sees every step**: each check looks at all steps since the last one (a GPU checks every few).

Batching: a batch of B prompts of longest length L costs ``B * n * (L + max_new_tokens)`` token slots (its KV cache
at the end of decoding); batches are filled, in length order, up to ``batch_tokens`` (a single prompt always
forms a batch even when it alone exceeds the budget). ``batch_tokens="auto"`` (``run.batch_tokens: auto``, the
default) sizes the budget from the device's free memory with ``sftnb.lm.memory``'s formula for a batch's peak (the
H200 logs: a 135M model ran 4x faster at 2**21 token slots than at 2**16); on a CPU it is ``CPU_BATCH_TOKENS``.

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
import os
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .batching import batches, cache_kwarg, check_prompts, device_of, left_pad, pad_id, resolve_budget
from .kv_cache import expand_cache, plain_layers, select_cache, static_cache

CHECK_EVERY = 4            # decode steps between "who finished?" checks on a GPU (each one is a host sync)
MIN_SHARED = 4             # a batch whose prompts all start with at least this many equal tokens prefills them once
_BLOCK = 256               # block width of the two-level cumulative sum used for sampling


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


# ------------------------------------------------------------------------------------------- generate
@dataclass
class StopRule:
    """Ends a sample as soon as a caller's condition holds, exactly (the mastery probe: "the text contains the
    answer"). ``boundary`` [V] marks tokens that begin with a non-word character: before such a token the text's
    last word is complete, so a whole-word match found then cannot be undone by later tokens. At those points
    ``done(prompt_index, tokens_so_far)`` is asked; a finished sample is cut there and leaves the batch."""
    boundary: torch.Tensor
    done: Callable[[int, list[int]], bool]


def _stop_check(stop: StopRule, candidates: torch.Tensor, alive: torch.Tensor, tokens: torch.Tensor, first: int,
                n: int, owners) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """The live rows the stop rule ends among the steps ``first``, ``first + 1``, ... since the last check
    (``candidates`` [live rows, steps]: a word boundary there, before the row's EOS): (their live indices, their
    original rows, the step each is cut at: its earliest boundary where ``done`` holds), or None. ONE
    device-to-host transfer per check: the candidate flags, each live row's original index and its tokens so far
    travel as one int32 block (a row-by-row ``.tolist()`` is one synchronisation per candidate)."""
    w = candidates.shape[1]
    upto = first + w - 1                                 # the last step asked: its tokens before it travel
    block = torch.cat([candidates.int(), alive[:, None].int(), tokens[alive, :upto].int()], 1).cpu()
    live, rows, cuts = [], [], []
    for r in block[:, :w].any(1).nonzero().squeeze(-1).tolist():      # host memory from here on
        row = int(block[r, w])
        text = block[r, w + 1:].tolist()
        for j in block[r, :w].nonzero().squeeze(-1).tolist():         # the row's boundaries, earliest first
            if stop.done(owners[row // n], text[:first + j]):
                live.append(r)
                rows.append(row)
                cuts.append(first + j)
                break
    if not live:
        return None
    return torch.tensor(live, dtype=torch.long), torch.tensor(rows, dtype=torch.long), torch.tensor(cuts)


@torch.inference_mode()
def _generate_batch(model, prompts, n, temperature, max_new_tokens, eos, pad, uniforms, stop=None, owners=None,
                    static=False, width=None, held=None):
    """One batch. ``width``: left-pad every prompt to this many columns (the static path's one shape per call);
    ``held``: the call's static cache, reused by its batches of one shape (``kv_cache.static_cache``)."""
    from transformers import DynamicCache

    dev = device_of(model)
    cache = DynamicCache(config=model.config)
    ckw = cache_kwarg(model)
    share = _shared_prefix(prompts)
    if share >= MIN_SHARED and len(prompts) > 1 and plain_layers(cache):
        # the common prefix once (one row), its cache repeated to every prompt, then each prompt's own tokens,
        # left-padded after it: the padding sits between prefix and suffix, masked out; positions stay exact
        pre = torch.tensor([prompts[0][:share]], dtype=torch.long, device=dev)
        model(input_ids=pre, position_ids=torch.arange(share, device=dev)[None], use_cache=True,
              logits_to_keep=1, **{ckw: cache})
        for layer in cache.layers:
            layer.batch_repeat_interleave(len(prompts))
        ids, smask, spos = left_pad([p[share:] for p in prompts], pad, dev, None if width is None else width - share)
        mask = torch.cat([smask.new_ones((len(prompts), share)), smask], dim=1)
        pos = spos + share
    else:
        ids, mask, pos = left_pad(prompts, pad, dev, width)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1,
                **{ckw: cache})
    logits = out.logits[:, -1]
    width = mask.shape[1]
    step_fn = model
    static = static and plain_layers(cache)          # sliding-window layers keep the dynamic path
    if static:
        cache, step_fn = static_cache(model, cache, n, width + max_new_tokens, held)
    else:
        expand_cache(cache, n, width + max_new_tokens)
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
    check_every, checked = _check_every(dev), 0              # checked: the stop rule has seen the steps before it
    u_all = uniforms.to(dev) if uniforms is not None else None
    boundary = stop.boundary.to(dev) if stop is not None else None
    for step in range(max_new_tokens):
        nxt = _sample(logits, temperature, u_all[alive, step] if u_all is not None else None)
        tokens[alive, step] = nxt
        if eos_t is not None:
            hit = torch.isin(nxt, eos_t) & ~done
            lengths[alive] = torch.where(hit, step, lengths[alive])
            done = done | hit
        last = step == max_new_tokens - 1
        if stop is not None and (last or step % check_every == check_every - 1):
            # every step since the last check: a GPU checks every few steps (each check is a host sync), and a
            # boundary at any of them ends the row there, as a check at every step would (the last token is
            # never a cut: the sample ends anyway)
            first, upto = max(1, checked), step - last
            checked = step + 1
            if first <= upto:
                at = tokens[alive, first:upto + 1]
                cand = boundary[at] & (torch.arange(first, upto + 1, device=dev) < lengths[alive][:, None])
                hits = _stop_check(stop, cand, alive, tokens, first, n, owners)
                if hits is not None:
                    done[hits[0].to(dev)] = True
                    lengths[hits[1].to(dev)] = hits[2].to(dev)
        if last:
            break
        if (eos_t is not None or stop is not None) and step % check_every == check_every - 1:
            keep = (~done).nonzero().squeeze(-1)               # host sync, once every check_every steps
            if keep.numel() == 0:
                break
            if keep.numel() < done.numel() and not static:     # compact: finished rows leave batch and cache
                select_cache(cache, keep)
                alive, nxt, mask, last_pos, done = alive[keep], nxt[keep], mask[keep], last_pos[keep], done[keep]
        last_pos = last_pos + 1
        # static: the whole mask every step (one shape for the CUDA graph; the cache masks unwritten positions)
        out = step_fn(input_ids=nxt[:, None], attention_mask=mask if static else mask[:, :width + step + 1],
                      position_ids=last_pos[:, None], use_cache=True, **{ckw: cache})
        logits = out.logits[:, -1].clone() if static else out.logits[:, -1]   # graph outputs are overwritten
    tokens, lengths = tokens.cpu(), lengths.cpu().tolist()
    return [tokens[r, :lengths[r]].tolist() for r in range(rows)]


def generate(model, prompts: Sequence[Sequence[int]], *, n: int = 1, temperature: float = 0.0,
             max_new_tokens: int = 32, eos_token_ids: Sequence[int] | int | None = (),
             pad_token_id: int | None = None, seed: int = 0, batch_tokens: int | str | None = "auto",
             progress: bool = True,
             desc: str = "generate", stop: StopRule | None = None,
             static: bool | str = "auto") -> list[list[list[int]]]:
    """For each prompt (token ids), ``n`` completions as token-id lists, cut before the first EOS (the EOS itself
    is dropped). ``temperature`` 0 is greedy decoding (then the ``n`` completions are identical; use n=1).
    Batches hold about ``batch_tokens`` token slots (rows x (longest prompt + max_new_tokens)); ``"auto"``: as many
    as the free device memory holds (``batching.resolve_budget``; ``CPU_BATCH_TOKENS`` on a CPU). See the module
    docstring for batching and determinism. ``static``: decode with a static KV cache, and on CUDA through CUDA
    graphs (``kv_cache.static_cache``); the same tokens as the dynamic path (tested on the CPU). ``"auto"`` (the
    default): static on CUDA, dynamic elsewhere (on a CPU the static path only adds padding). A static call gives
    every batch one shape (see ``_static_batches``), and falls back to the dynamic path, with one warning, where
    compiling or capturing fails; "auto" then stays dynamic in this process. ``SFTNB_STATIC_DECODE=0`` in the
    environment makes "auto" dynamic everywhere (where compiling is slow or broken)."""
    if n < 1 or max_new_tokens < 1:
        raise ValueError("n and max_new_tokens must be at least 1")
    prompts = [list(map(int, p)) for p in prompts]
    check_prompts(prompts)
    if not prompts:                 # an empty set (a smoke run's test split): nothing to size a static call by
        return []
    if isinstance(eos_token_ids, int):
        eos_token_ids = (eos_token_ids,)
    eos = {int(e) for e in (eos_token_ids or ()) if e is not None}
    pad = pad_id(model, pad_token_id)
    lengths = [len(p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (lengths[i], i))
    if static == "auto":
        static = _on_cuda(model) and not _STATIC["failed"] and os.environ.get("SFTNB_STATIC_DECODE", "1") != "0"
    width = _bucket(max(lengths)) if static else None
    batch_tokens = resolve_budget(batch_tokens, model, lambda: slot_bytes(model, width or max(lengths),
                                                                          max_new_tokens, n, temperature > 0))
    keys = _prompt_keys(prompts, seed) if temperature > 0 else None
    results: list[list[list[int]]] = [[] for _ in prompts]
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress, leave=False)
    if static:          # every row costs the call's padded width: batches of one size (the last one padded)
        plan = _static_batches(_static_groups(order, batch_tokens // (n * (width + max_new_tokens))))
    else:
        plan = [(b, b) for b in batches(order, lambda rows, i: rows * n * (lengths[i] + max_new_tokens), batch_tokens)]
    held: dict = {}                                  # the static path's cache, kept across a call's batches
    for batch, rows in plan:
        uniforms = _uniforms(keys[rows], n, max_new_tokens) if keys is not None else None
        args = ([prompts[i] for i in rows], n, temperature, max_new_tokens, eos, pad, uniforms, stop, rows)
        if static:
            try:
                outs = _generate_batch(model, *args, static=True, width=width, held=held)
            except Exception as e:     # noqa: BLE001  compile / capture / graph memory: the dynamic path is exact too
                _STATIC["failed"] = True
                warnings.warn(f"sftnb: static KV cache decode failed ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''}); this process decodes "
                              f"dynamically from here")
                static, width = False, None
                outs = _generate_batch(model, *args)
        else:
            outs = _generate_batch(model, *args)
        for j, i in enumerate(batch):
            results[i] = outs[j * n:(j + 1) * n]
        bar.update(len(batch))
    bar.close()
    return results


# once a static decode has failed (most likely the environment: no working compiler for the GPU), "auto"
# decodes dynamically for the rest of the process, so that no later model pays a failing compile again
_STATIC = {"failed": False}


def static_fell_back() -> bool:
    """Has a static decode failed in this process (so "auto" decodes dynamically now)? Benchmarks report it."""
    return _STATIC["failed"]


def _on_cuda(model) -> bool:
    """Where ``static="auto"`` decodes with the static cache: CUDA, where the graphs it allows pay."""
    return device_of(model).type == "cuda"


def _bucket(length: int, step: int = 8) -> int:
    """A static call's padded prompt width: the longest prompt rounded up to ``step`` (fewer distinct shapes across
    calls, each of which torch.compile and CUDA graphs handle once)."""
    return -(-length // step) * step


def _static_groups(order: list[int], fits: int) -> list[list[int]]:
    """A static call's batches: ``order`` in groups of the largest power of two of rows within ``fits`` (at least
    one). The budget follows the free memory, which moves between calls (each call's graphs take some); a power of
    two keeps the calls of a run to a few decode shapes, at no less than half the rows that fit."""
    size = 1 << (max(1, fits).bit_length() - 1)
    return [order[i:i + size] for i in range(0, len(order), size)]


def _static_batches(groups: list[list[int]]) -> list[tuple[list[int], list[int]]]:
    """(batch, rows) per batch of a static call: ``rows`` is the batch padded with copies of its last prompt to the
    call's largest batch size, or for a smaller last batch to the next power of two (at most that size). So a
    call decodes in one shape, or two: torch.compile (``dynamic=False``) and CUDA graphs capture each shape once,
    where a shape per batch would recompile past dynamo's limit. The copies' outputs are dropped (their samples
    are those of the prompt they copy: the same keys)."""
    if not groups:
        return []
    full = max(len(b) for b in groups)
    out = []
    for b in groups:
        size = full if len(b) == full else min(full, 1 << (len(b) - 1).bit_length())
        out.append((b, b + [b[-1]] * (size - len(b))))
    return out


def slot_bytes(model, prompt: int, new: int, n: int, sampling: bool) -> float:
    """Peak device bytes of a generate() batch per token slot of its budget (``sftnb.lm.memory.generation_peak``:
    KV cache, logits, sampler and forward), for prompts of ``prompt`` tokens."""
    from .memory import generation_peak, model_shape

    shape = model_shape(model.config.to_dict())
    b = next(model.parameters()).element_size()
    slots = 1 << 22
    return generation_peak(shape, b, slots, prompt, new, n, sampling).total / slots


def greedy(model, prompts: Sequence[Sequence[int]], **kw) -> list[list[int]]:
    """Greedy decoding (temperature 0, one completion per prompt): the tokens ``model.generate(do_sample=False)``
    produces, cut before the first EOS. Keyword arguments as for ``generate`` (except n/temperature)."""
    return [c[0] for c in generate(model, prompts, n=1, temperature=0.0, **kw)]


def decode(tokenizer, completions: Sequence[Sequence[Sequence[int]]]) -> list[list[str]]:
    """Texts of ``generate``'s output (same nesting), special tokens skipped."""
    return [tokenizer.batch_decode(list(per_prompt), skip_special_tokens=True) if per_prompt else []
            for per_prompt in completions]
