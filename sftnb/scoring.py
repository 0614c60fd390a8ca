"""Teacher-forced scoring: what a causal LM gives to known continuations, without sampling.

    first_token_logits(model, prompts, ...) -> Tensor [N, V] float32 (CPU): the next-token logits (§4's KL)
    continuation_logprobs(model, prompts, continuations, temperature=1.0, ...) -> list[list[float]]: the
        log-probability of each candidate continuation (the likelihood mastery estimator)
    lead_in_probs(model, prompts, watch, n_lead, temperature=1.0, ...) -> list[dict]: the probability of watched
        tokens at the start and right after the model's likeliest other first tokens (its lead-ins)

All work on token-id lists in left-padded batches of about ``batch_tokens`` tokens (``sftnb.batching``); only the
positions needed are projected on the vocabulary (``logits_to_keep``), so any causal LM's own head applies.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .batching import LOGITS_BUDGET, batches, cache_kwarg, check_prompts, device_of, left_pad, pad_id

@torch.inference_mode()
def first_token_logits(model, prompts: Sequence[Sequence[int]], batch_tokens: int = 16384,
                       pad_token_id: int | None = None, progress: bool = False) -> torch.Tensor:
    """[N, V] float32 on the CPU: the next-token logits after each prompt (one padded forward per batch of about
    ``batch_tokens`` tokens, only the last position projected on the vocabulary)."""
    prompts = [list(map(int, p)) for p in prompts]
    check_prompts(prompts)
    if not prompts:
        vocab = model.get_output_embeddings().weight.shape[0] if model.get_output_embeddings() is not None \
            else model.config.vocab_size
        return torch.zeros((0, vocab), dtype=torch.float32)
    pad = pad_id(model, pad_token_id)
    lengths = [len(p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (lengths[i], i))
    out: torch.Tensor | None = None
    bar = tqdm(total=len(prompts), desc="logits", disable=not progress, leave=False)
    for batch in batches(order, lambda rows, i: rows * lengths[i], batch_tokens):
        ids, mask, pos = left_pad([prompts[i] for i in batch], pad, device_of(model))
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
    check_prompts(prompts)
    pad, dev = pad_id(model, pad_token_id), device_of(model)
    vocab = model.config.get_text_config().vocab_size
    lengths = [len(p) for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: (lengths[i], i))
    rows_cap = max(1, LOGITS_BUDGET // (max(1, n_lead) * vocab))        # bound the [rows x n_lead, V] logits
    out: list[dict] = [{} for _ in prompts]
    ckw = cache_kwarg(model)
    excluded = torch.tensor(sorted(set(map(int, exclude))), dtype=torch.long, device=dev)
    bar = tqdm(total=len(prompts), desc="lead-ins", disable=not progress, leave=False)
    for big in batches(order, lambda rows, i: rows * (lengths[i] + 1), batch_tokens):
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
    check_prompts(prompts)
    pad = pad_id(model, pad_token_id)
    dev = device_of(model)
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
    for big in batches(order, cost, batch_tokens):
        # split further so the kept logits stay within LOGITS_BUDGET entries
        per_row = (max(len(conts[i]) for i in big) + 1) * vocab
        step = max(1, LOGITS_BUDGET // per_row)
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
