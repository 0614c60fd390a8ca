"""A small generation engine for probing and evaluation: many short prompts, many samples, few new tokens.

What makes it faster than ``model.generate(do_sample=True, num_return_sequences=n)`` on this workload:
- each prompt's prefix is computed once and its KV cache repeated for its n samples;
- prefill keeps only the last position's logits (no [B, L, V] tensor);
- sampling is a Gumbel-max / exponential race on the scaled logits (no full softmax + multinomial);
- finished rows (EOS) are dropped from the batch and the cache every few steps, so they stop costing compute;
- prompts are sorted by length so batches carry little padding, and batches are sized by a token budget.
Works on token-id lists with any Hugging Face causal LM (attention mask + explicit position ids).

Determinism: the same call (prompts, n, seed, batch_tokens) gives the same samples: each batch draws its noise
from a generator seeded by (seed, the batch's first prompt index in length order).
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch
from tqdm.auto import tqdm

# transformers 5.2x renames `past_key_values` to `cache`; 5.17 (the GPU image) knows only the old name.
warnings.filterwarnings("ignore", message=".*past_key_values.*is deprecated", category=FutureWarning)

CHECK_EVERY = 4          # steps between "who finished?" checks (each check is a host sync on a GPU)


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _pad_id(model, pad_token_id):
    if pad_token_id is not None:
        return pad_token_id
    pid = getattr(model.config, "pad_token_id", None)
    return 0 if pid is None else pid


def _left_pad(seqs: Sequence[Sequence[int]], pad: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s):] = 1
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    return ids.to(device), mask.to(device), pos.to(device)


def _batches(lengths: Sequence[int], order: Sequence[int], cost_per_token: int, extra: int, budget: int):
    """Consecutive runs of ``order`` whose padded cost (rows x (longest + extra) x cost_per_token) fits."""
    batch: list[int] = []
    longest = 0
    for i in order:
        L = max(longest, lengths[i])
        if batch and (len(batch) + 1) * (L + extra) * cost_per_token > budget:
            yield batch
            batch, L = [], lengths[i]
        batch.append(i)
        longest = L
    if batch:
        yield batch


def _next_tokens(logits: torch.Tensor, temperature: float, gen: torch.Generator | None) -> torch.Tensor:
    logits = logits.float()
    if temperature <= 0:
        return logits.argmax(-1)
    noise = torch.empty_like(logits).exponential_(generator=gen)     # Exp(1) race == Gumbel-max
    return (logits / temperature - noise.log()).argmax(-1)


@torch.inference_mode()
def _generate_batch(model, prompts, n, temperature, max_new_tokens, eos, pad, gen):
    from transformers import DynamicCache

    dev = _device(model)
    ids, mask, pos = _left_pad(prompts, pad, dev)
    cache = DynamicCache(config=model.config)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
                logits_to_keep=1)
    logits = out.logits[:, -1]
    if n > 1:                       # share the prefix: repeat the prompt's cache rows for its samples
        cache.batch_repeat_interleave(n)
        logits = logits.repeat_interleave(n, 0)
        mask = mask.repeat_interleave(n, 0)
        pos = pos.repeat_interleave(n, 0)
    rows = logits.shape[0]
    alive = torch.arange(rows, device=dev)                  # original row of each live row
    tokens = torch.full((rows, max_new_tokens), pad, dtype=torch.long, device=dev)
    lengths = torch.full((rows,), max_new_tokens, dtype=torch.long, device=dev)
    eos_t = torch.tensor(sorted(eos), dtype=torch.long, device=dev) if eos else None
    finished = torch.zeros(rows, dtype=torch.bool, device=dev)
    last_pos = pos[:, -1]
    for step in range(max_new_tokens):
        nxt = _next_tokens(logits, temperature, gen)
        tokens[alive, step] = nxt
        if eos_t is not None:
            hit = torch.isin(nxt, eos_t) & ~finished
            lengths[alive[hit]] = step
            finished |= hit
        if step == max_new_tokens - 1:
            break
        if eos_t is not None and (step % CHECK_EVERY == CHECK_EVERY - 1):
            keep = (~finished).nonzero().squeeze(-1)
            if keep.numel() == 0:
                break
            if keep.numel() < finished.numel():          # compact: finished rows leave batch and cache
                cache.batch_select_indices(keep)
                alive, nxt, mask, last_pos = alive[keep], nxt[keep], mask[keep], last_pos[keep]
                finished = finished[keep]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        last_pos = last_pos + 1
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=last_pos[:, None],
                    past_key_values=cache, use_cache=True)
        logits = out.logits[:, -1]
    tokens, lengths = tokens.cpu(), lengths.cpu()
    return [tokens[r, :lengths[r]].tolist() for r in range(rows)]


def generate(model, prompts: Sequence[Sequence[int]], *, n: int = 1, temperature: float = 0.0,
             max_new_tokens: int = 32, eos_token_ids: Sequence[int] = (), pad_token_id: int | None = None,
             seed: int = 0, batch_tokens: int = 16384, progress: bool = True,
             desc: str = "generate") -> list[list[list[int]]]:
    """For each prompt (token ids), ``n`` completions as token-id lists, cut before the first EOS.
    ``temperature`` 0 is greedy decoding (then ``n`` copies are identical; use n=1)."""
    if n < 1 or max_new_tokens < 1:
        raise ValueError("n and max_new_tokens must be at least 1")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("empty prompt")
    pad = _pad_id(model, pad_token_id)
    eos = set(int(e) for e in eos_token_ids if e is not None)
    lengths = [len(p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (lengths[i], i))
    results: list[list[list[int]]] = [[] for _ in prompts]
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress, leave=False)
    for batch in _batches(lengths, order, n, max_new_tokens, batch_tokens):
        gen = None
        if temperature > 0:
            gen = torch.Generator(device=_device(model)).manual_seed(seed * 1_000_003 + batch[0])
        outs = _generate_batch(model, [prompts[i] for i in batch], n, temperature, max_new_tokens, eos, pad, gen)
        for j, i in enumerate(batch):
            results[i] = outs[j * n:(j + 1) * n]
        bar.update(len(batch))
    bar.close()
    return results


def greedy(model, prompts, **kw) -> list[list[int]]:
    return [c[0] for c in generate(model, prompts, n=1, temperature=0.0, **kw)]


def decode(tokenizer, completions: list[list[list[int]]]) -> list[list[str]]:
    return [[tokenizer.decode(c, skip_special_tokens=True) for c in per_prompt] for per_prompt in completions]


@torch.inference_mode()
def first_token_logits(model, prompts: Sequence[Sequence[int]], batch_tokens: int = 16384,
                       pad_token_id: int | None = None) -> torch.Tensor:
    """[N, V] float32 (CPU): the next-token logits after each prompt."""
    pad = _pad_id(model, pad_token_id)
    lengths = [len(p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (lengths[i], i))
    out = [None] * len(prompts)
    for batch in _batches(lengths, order, 1, 0, batch_tokens):
        ids, mask, pos = _left_pad([prompts[i] for i in batch], pad, _device(model))
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=1).logits[:, -1]
        for j, i in enumerate(batch):
            out[i] = logits[j].float().cpu()
    return torch.stack(out) if out else torch.zeros(0)


@torch.inference_mode()
def continuation_logprobs(model, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[Sequence[int]]],
                          temperature: float = 1.0, batch_tokens: int = 16384, progress: bool = False,
                          pad_token_id: int | None = None) -> list[list[float]]:
    """For each prompt and each candidate continuation: Σ log softmax(logits / T) over the continuation's
    tokens, teacher-forced. All (prompt, continuation) pairs go through padded batches; the vocabulary
    projection runs only at the continuation positions."""
    pad = _pad_id(model, pad_token_id)
    pairs = [(pi, ci) for pi, conts in enumerate(continuations) for ci in range(len(conts))]
    seqs = [list(prompts[pi]) + list(continuations[pi][ci]) for pi, ci in pairs]
    lengths = [len(s) for s in seqs]
    order = sorted(range(len(seqs)), key=lambda i: (lengths[i], i))
    scores = [0.0] * len(seqs)
    dev = _device(model)
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    bar = tqdm(total=len(seqs), desc="score", disable=not progress, leave=False)
    for batch in _batches(lengths, order, 1, 0, batch_tokens):
        ids, mask, pos = _left_pad([seqs[i] for i in batch], pad, dev)
        hidden = decoder(input_ids=ids, attention_mask=mask, position_ids=pos).last_hidden_state
        width = ids.shape[1]
        rows, cols, targets, owner = [], [], [], []
        for j, i in enumerate(batch):
            pi, ci = pairs[i]
            cont = continuations[pi][ci]
            start = width - len(cont)               # left padding: the continuation ends the row
            for t, tok in enumerate(cont):
                rows.append(j)
                cols.append(start + t - 1)          # the position that predicts token t
                targets.append(tok)
                owner.append(i)
        if not rows:
            bar.update(len(batch))
            continue
        logits = head(hidden[torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)]).float()
        lp = (logits / temperature).log_softmax(-1).gather(-1, torch.tensor(targets, device=dev)[:, None])[:, 0]
        for i, v in zip(owner, lp.cpu().tolist()):
            scores[i] += v
        bar.update(len(batch))
    bar.close()
    out: list[list[float]] = [[0.0] * len(c) for c in continuations]
    for (pi, ci), s in zip(pairs, scores):
        out[pi][ci] = s
    return out
