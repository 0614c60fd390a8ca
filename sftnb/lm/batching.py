"""Batches of token-id sequences for a causal LM: left padding with explicit positions, and batches of about a
token budget. Shared by generation (``sftnb.lm.generation``), teacher-forced scoring (``sftnb.lm.scoring``) and SFT
(``sftnb.sft``), so every forward the package runs pads and positions the same way.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

LOGITS_BUDGET = 1 << 25    # scoring: at most this many logit entries per batch (~128 MB in fp32)
# run.batch_tokens "auto" on a CPU, where there is no free device memory to size batches by: the budget measured
# fastest for the embedded 135M model on a 2-core Xeon (larger batches gain nothing there and cost RAM)
CPU_BATCH_TOKENS = 16384
USABLE = 0.90              # share of the free device memory an "auto" budget may fill (sftnb.lm.memory.USABLE)


def device_of(model) -> torch.device:
    return next(model.parameters()).device


def pad_id(model, pad_token_id):
    if pad_token_id is not None:
        return int(pad_token_id)
    pid = getattr(model.config, "pad_token_id", None)
    if isinstance(pid, (list, tuple)):
        pid = pid[0] if pid else None
    return 0 if pid is None else int(pid)


def free_device_bytes(device: torch.device) -> int | None:
    """Bytes a new batch may take on ``device``: up to USABLE of the device minus what torch holds now (the rule
    ``sftnb plan`` checks every stage against), and never more than is free (another process, the CUDA context);
    None on a CPU (no such query: its budget is ``CPU_BATCH_TOKENS``)."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    held, reserved = torch.cuda.memory_allocated(device), torch.cuda.memory_reserved(device)
    return max(0, int(min(USABLE * total - held, free + reserved - held)))


def resolve_budget(batch_tokens, model, bytes_per_token: Callable[[], float]) -> int:
    """``batch_tokens`` as given, or for ``"auto"`` / None the largest budget whose batches fit the free device
    memory (``bytes_per_token()``: a batch's peak per budget token, ``sftnb.lm.memory``'s formula), or
    ``CPU_BATCH_TOKENS`` on a CPU."""
    if batch_tokens not in (None, "auto"):
        return int(batch_tokens)
    room = free_device_bytes(device_of(model))
    if room is None:
        return CPU_BATCH_TOKENS
    return max(64, int(room / bytes_per_token()))


def cache_kwarg(model) -> str:
    """The forward() keyword for the KV cache: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def check_prompts(prompts) -> None:
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty (the engine needs at least one token, e.g. BOS)")


def left_pad(seqs: Sequence[Sequence[int]], pad: int, device="cpu",
             width: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input_ids, attention_mask and position_ids (0 at the first real token) of a left-padded batch: every
    row's last token sits in the last column (what generation and the answer-only SFT loss both rely on).
    ``width``: at least this many columns (default: the longest sequence's)."""
    width = max(max(len(s) for s in seqs), width or 0)
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


def batches(order: Sequence[int], cost: Callable[[int, int], float], budget: float) -> list[list[int]]:
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
