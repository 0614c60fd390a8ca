"""Teacher-forced scoring: what a causal LM gives to known continuations, without sampling.

    first_token_logits(model, prompts, ...) -> Tensor [N, V] float32 (CPU): the next-token logits (§4's KL)
    continuation_logprobs(model, prompts, continuations, temperature=1.0, ...) -> list[list[float]]: the
        log-probability of each candidate continuation (the likelihood mastery estimator)
    lead_in_probs(model, prompts, watch, n_lead, temperature=1.0, ..., depth=1) -> list[dict]: the probability of
        watched tokens at the start and right after the model's likeliest other first tokens or phrases (lead-ins)

All work on token-id lists in left-padded batches of about ``batch_tokens`` tokens (``sftnb.lm.batching``); only the
positions needed are projected on the vocabulary (``logits_to_keep``), so any causal LM's own head applies.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from .batching import LOGITS_BUDGET, batches, cache_kwarg, check_prompts, device_of, left_pad, pad_id, resolve_budget


def _budget(batch_tokens, model) -> int:
    """``batch_tokens``, or for "auto" what the free device memory holds at a no-grad forward's peak per token
    (``sftnb.lm.memory.forward_bytes_per_token``; the logits have their own budget, LOGITS_BUDGET)."""
    def per_token():
        from .memory import forward_bytes_per_token, model_shape
        shape = model_shape(model.config.to_dict())
        b = next(model.parameters()).element_size()
        return forward_bytes_per_token(shape, b) + 2 * shape.layers * shape.kv_dim * b
    return resolve_budget(batch_tokens, model, per_token)

@torch.inference_mode()
def first_token_logits(model, prompts: Sequence[Sequence[int]], batch_tokens: int | str | None = "auto",
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
    for batch in batches(order, lambda rows, i: rows * lengths[i], _budget(batch_tokens, model)):
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
                  temperature: float = 1.0, exclude: Sequence[int] = (), batch_tokens: int | str | None = "auto",
                  pad_token_id: int | None = None, progress: bool = False, depth: int = 1) -> list[dict]:
    """For each prompt: the tempered next-token probabilities of the ``watch`` tokens (e.g. an answer's first
    tokens), the ``n_lead`` most likely lead-in phrases of up to ``depth`` tokens that are not watched (nor in
    ``exclude``) with their probabilities, and the probabilities of the watched tokens right after each phrase.

    The phrases are a beam: depth 1 keeps the ``n_lead`` likeliest other first tokens; depth d + 1 keeps the
    ``n_lead`` likeliest one-token extensions (again neither watched nor excluded) of depth d's phrases. No phrase
    is a prefix of another one followed by a watched token, so the events "the sample is phrase + watched token"
    are disjoint, and their probabilities add up (``sftnb.mastery``). " a landmark of | Richmond" is a depth-3
    lead-in.

    Each batch is prefilled once; its KV cache is then repeated to the phrases, which take one decode step per
    depth together: the cost is about one teacher-forced pass over the prompts plus ``depth`` x ``n_lead`` tokens.
    Returns ``[{"start": [p(watch_j)], "leads": [(phrase tokens, p)], "after": [[p(watch_j | phrase)] per
    phrase]}]``, depth 1's phrases first."""
    from transformers import DynamicCache

    if temperature <= 0:
        raise ValueError("temperature must be > 0")
    if depth < 1:
        raise ValueError("depth must be >= 1")
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

    def block(probs: torch.Tensor, batch: list[int], per_row: int) -> torch.Tensor:
        """probs [len(batch) * per_row, V] with the excluded and each prompt's watched tokens set to -1."""
        blocked = probs.clone()
        if excluded.numel():
            blocked[:, excluded] = -1
        for j, i in enumerate(batch):
            if watch[i]:
                blocked[j * per_row:(j + 1) * per_row, torch.tensor(list(watch[i]), device=dev)] = -1
        return blocked

    bar = tqdm(total=len(prompts), desc="lead-ins", disable=not progress, leave=False)
    for big in batches(order, lambda rows, i: rows * (lengths[i] + 1), _budget(batch_tokens, model)):
        for s in range(0, len(big), rows_cap):
            batch = big[s:s + rows_cap]
            nb = len(batch)
            ids, mask, pos = left_pad([prompts[i] for i in batch], pad, dev)
            cache = DynamicCache(config=model.config)
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                           logits_to_keep=1, **{ckw: cache}).logits[:, -1].float()
            probs = (logits / temperature).softmax(-1)
            for j, i in enumerate(batch):
                w = torch.tensor(list(watch[i]), dtype=torch.long, device=dev)
                out[i] = {"start": probs[j, w].tolist() if len(w) else [], "leads": [], "after": []}
            if not n_lead:
                bar.update(nb)
                continue
            # depth 1: the likeliest unwatched first tokens of each prompt
            p_lead, leads = block(probs, batch, 1).topk(n_lead, dim=-1)              # [nb, n_lead]
            p_lead = p_lead.clamp_min(0)                                              # a blocked pick counts 0
            phrases = [[(t,) for t in leads[j].tolist()] for j in range(nb)]
            for layer in cache.layers:
                layer.batch_repeat_interleave(n_lead)
            step_mask = mask.repeat_interleave(n_lead, 0)
            step_pos = pos[:, -1:].repeat_interleave(n_lead, 0)
            for d in range(depth):
                step_mask = torch.cat([step_mask, step_mask.new_ones((nb * n_lead, 1))], 1)
                step_pos = step_pos + 1
                after = model(input_ids=leads.reshape(-1, 1), attention_mask=step_mask, position_ids=step_pos,
                              use_cache=True, logits_to_keep=1, **{ckw: cache}).logits[:, -1].float()
                after = (after / temperature).softmax(-1)                              # [nb * n_lead, V]
                for j, i in enumerate(batch):
                    w = torch.tensor(list(watch[i]), dtype=torch.long, device=dev)
                    rows = after[j * n_lead:(j + 1) * n_lead]
                    out[i]["leads"] += [(ph, float(p)) for ph, p in zip(phrases[j], p_lead[j].tolist())]
                    out[i]["after"] += rows[:, w].tolist() if len(w) else [[] for _ in range(n_lead)]
                if d == depth - 1:
                    break
                # depth d + 2: the likeliest unwatched one-token extensions of the phrases, over all of them
                ext = block(after, batch, n_lead) * p_lead.reshape(-1, 1)               # P(phrase + token)
                p_lead, flat = ext.view(nb, -1).topk(n_lead, dim=-1)                  # [nb, n_lead] over n_lead x V
                p_lead = p_lead.clamp_min(0)
                parent, leads = flat // after.shape[-1], flat % after.shape[-1]
                phrases = [[phrases[j][pa] + (t,) for pa, t in zip(parent[j].tolist(), leads[j].tolist())]
                           for j in range(nb)]
                rows_kept = (torch.arange(nb, device=dev)[:, None] * n_lead + parent).reshape(-1)
                for layer in cache.layers:
                    layer.batch_select_indices(rows_kept)
                step_mask = step_mask[rows_kept]
            bar.update(nb)
    bar.close()
    return out


@torch.inference_mode()
def continuation_logprobs(model, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[Sequence[int]]],
                          temperature: float = 1.0, batch_tokens: int | str | None = "auto", progress: bool = False,
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
    for big in batches(order, cost, _budget(batch_tokens, model)):
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
