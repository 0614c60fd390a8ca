"""Parameter restoration (paper §5, App. B.2): put the most-changed parameters back to their pre-trained values.

Relative change r = |s - p| / (|p| + 1e-8), element-wise, in float32 whatever the storage dtype. Selecting the
top k % of r *globally* (across every tensor of a region) is done exactly without a flat copy of all r:

- r >= 0, so its float32 bit pattern read as int32 is monotone in r. A radix select over those bits (digits of
  11, 11 and 10 bits, three streamed passes over the tensors, one histogram per pass) finds the threshold T,
  the count-th largest value, and how many elements equal to T to take. Every k of a sweep shares the passes.
- Ties at T are broken deterministically: the first ones in (region order of tensors, flat index) order.
- "bottom" selects the count smallest (the key is flipped); "random" selects the count largest of i.i.d.
  uniform keys drawn per tensor from a generator seeded by (seed, tensor index): exactly count elements,
  reproducible, no n-element permutation.
count = floor(n * k / 100).

A ``Restorer`` works on a live model: ``restore(k)`` writes pre-trained values in place and remembers the
fine-tuned values it overwrote (memory proportional to k), ``undo()`` puts them back bit for bit. The CLI
(``restore_cli``) applies the same selection to checkpoints on disk, streaming tensor by tensor.
"""
from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import pandas as pd
import torch

from .errors import SftnbError

EPS = 1e-8
REGIONS = ("transformer", "mlp", "attention", "embedding", "all")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
# radix digits over the 32 bits of a non-negative float32: (shift, width)
_DIGITS = ((21, 11), (10, 11), (0, 10))
MODULE_TYPES = {"mlp.down_proj": "mlp.down", "mlp.up_proj": "mlp.up", "mlp.gate_proj": "mlp.gate",
                "self_attn.o_proj": "attn.o", "self_attn.q_proj": "attn.q", "self_attn.v_proj": "attn.v",
                "self_attn.k_proj": "attn.k"}


# --------------------------------------------------------------------------------------------- regions
def layer_of(name: str) -> int | None:
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def module_type(name: str) -> str:
    for key, label in MODULE_TYPES.items():
        if f".{key}." in f".{name}":
            return label
    return "other"


def in_region(name: str, region: str) -> bool:
    if region not in REGIONS:
        raise SftnbError(f"unknown region {region!r} (one of {', '.join(REGIONS)})")
    is_norm = "norm" in name.rsplit(".", 2)[-2] if "." in name else "norm" in name
    in_layer = layer_of(name) is not None
    if region == "all":
        return True
    if region == "embedding":
        return "embed_tokens" in name or name.startswith("lm_head")
    if not in_layer or is_norm:
        return False
    if region == "mlp":
        return ".mlp." in name
    if region == "attention":
        return ".self_attn." in name
    return True                                   # transformer: every non-norm parameter of a decoder layer


def region_names(names: Iterable[str], region: str) -> list[str]:
    return [n for n in names if in_region(n, region)]


def relative_change(tuned: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    """|s - p| / (|p| + 1e-8) in float32 (App. B.2)."""
    s, p = tuned.float(), base.float()
    return (s - p).abs_().div_(p.abs().add_(EPS))


# --------------------------------------------------------------------------------------------- selection
def _bits(x: torch.Tensor) -> torch.Tensor:
    """int64 keys, monotone in the non-negative float32 values of ``x`` (NaN counts as smallest)."""
    x = torch.nan_to_num(x.float().reshape(-1), nan=0.0)
    return x.view(torch.int32).to(torch.int64)


FLIP = 0x7FFFFFFF


@dataclass
class Threshold:
    """Take every element with key > ``key``, and the first ``ties`` elements with key == ``key``."""
    count: int
    key: int
    ties: int

    def value(self, flipped: bool = False) -> float:
        k = FLIP - self.key if flipped else self.key
        return torch.tensor([k], dtype=torch.int32).view(torch.float32).item() if self.count else math.nan


def radix_thresholds(keys_of: Callable[[], Iterable[torch.Tensor]], counts: Sequence[int]) -> list[Threshold]:
    """For each count c, the threshold of the c largest int keys (0 <= key < 2^31) over all tensors that
    ``keys_of()`` streams; three passes, whatever the number of counts."""
    state = [[0, c] for c in counts]              # per count: (prefix of fixed high bits, how many still needed)
    done_bits = 0
    for shift, width in _DIGITS:
        hists = [torch.zeros(1 << width, dtype=torch.int64) for _ in counts]
        for keys in keys_of():
            digit = (keys >> shift) & ((1 << width) - 1)
            high = keys >> (shift + width)
            for i, (prefix, need) in enumerate(state):
                if need <= 0:
                    continue
                sel = digit if done_bits == 0 else digit[high == prefix]
                hists[i] += torch.bincount(sel, minlength=1 << width)
        for i, (prefix, need) in enumerate(state):
            if need <= 0:
                state[i] = [(prefix << width), need]
                continue
            above = hists[i].flip(0).cumsum(0).flip(0) - hists[i]     # elements in higher digits
            d = int(((above < need) & (above + hists[i] >= need)).nonzero()[-1])
            state[i] = [(prefix << width) | d, need - int(above[d])]
        done_bits += width
    return [Threshold(c, prefix if c else FLIP + 1, need if c else 0) for c, (prefix, need) in zip(counts, state)]


@dataclass
class Selection:
    """What one restoration took: the threshold and how many elements of each tensor."""
    k_percent: float
    strategy: str
    count: int
    total: int
    threshold: float
    per_tensor: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"k_percent": self.k_percent, "strategy": self.strategy, "count": self.count, "total": self.total,
                "threshold": self.threshold, "per_tensor": self.per_tensor}


class _Scorer:
    """Streams the selection keys of a region's tensors (recomputed on each pass: no copy of all r is kept)."""

    def __init__(self, names: list[str], tuned: Callable[[str], torch.Tensor], base: Callable[[str], torch.Tensor],
                 strategy: str, seed: int):
        if strategy not in ("top", "bottom", "random"):
            raise SftnbError(f"unknown strategy {strategy!r} (top, bottom or random)")
        self.names, self.tuned, self.base, self.strategy, self.seed = names, tuned, base, strategy, seed

    def keys(self, i: int) -> torch.Tensor:
        name = self.names[i]
        if self.strategy == "random":
            t = self.tuned(name)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
            return _bits(torch.rand(t.numel(), generator=g))
        b = _bits(relative_change(self.tuned(name), self.base(name)))
        return FLIP - b if self.strategy == "bottom" else b

    def stream(self) -> Iterable[torch.Tensor]:
        return (self.keys(i) for i in range(len(self.names)))


def _counts(total: int, k_percents: Sequence[float]) -> list[int]:
    for k in k_percents:
        if not (0 < k <= 100):
            raise SftnbError(f"k={k:g}: restoration percent must lie in (0, 100]")
    return [math.floor(total * k / 100) for k in k_percents]


def _masks(scorer: _Scorer, th: Threshold) -> Iterable[tuple[int, torch.Tensor]]:
    """Per tensor (in region order): the boolean mask of selected elements."""
    ties_left = th.ties
    for i in range(len(scorer.names)):
        keys = scorer.keys(i)
        mask = keys > th.key
        if ties_left > 0:
            eq = keys == th.key
            n_eq = int(eq.sum())
            if n_eq:
                if n_eq <= ties_left:
                    mask |= eq
                else:                            # the first ties_left equal elements, by flat index
                    mask |= eq & (eq.cumsum(0) <= ties_left)
                ties_left -= min(n_eq, ties_left)
        yield i, mask


# --------------------------------------------------------------------------------------------- a live model
class Restorer:
    """Restore / undo on a fine-tuned model in place, against pre-trained weights (a model, a state dict, or a
    Hugging Face folder read lazily through memory-mapped safetensors)."""

    def __init__(self, model, base, region: str = "transformer"):
        self.model = model
        self.region = region
        params = dict(model.named_parameters())
        self.names = region_names(params, region)
        if not self.names:
            raise SftnbError(f"region {region!r} holds no parameter of this model")
        self.params = {n: params[n] for n in self.names}
        self._base = _base_getter(base)
        for n in self.names:
            b = self._base(n)
            if tuple(b.shape) != tuple(self.params[n].shape):
                raise SftnbError(f"{n}: shape {tuple(self.params[n].shape)} differs from the pre-trained "
                                 f"{tuple(b.shape)}")
        self.total = sum(p.numel() for p in self.params.values())
        self._undo: list[tuple[str, torch.Tensor, torch.Tensor]] | None = None
        self._thresholds: dict[tuple[str, int, float], Threshold] = {}

    def _scorer(self, strategy="top", seed=0) -> _Scorer:
        return _Scorer(self.names, lambda n: self.params[n].detach(), self._base, strategy, seed)

    # -- statistics
    def thresholds(self, k_percents: Sequence[float], strategy: str = "top", seed: int = 0) -> list[Threshold]:
        """Thresholds of several k from one set of passes (cached: a sweep's restores reuse them)."""
        if self._undo is not None:
            self.undo()                     # thresholds are of the fine-tuned weights
        missing = [k for k in dict.fromkeys(k_percents) if (strategy, seed, k) not in self._thresholds]
        if missing:
            found = radix_thresholds(self._scorer(strategy, seed).stream, _counts(self.total, missing))
            self._thresholds.update({(strategy, seed, k): th for k, th in zip(missing, found)})
        return [self._thresholds[(strategy, seed, k)] for k in k_percents]

    @torch.no_grad()
    def concentration(self, xs: Sequence[float] = (1, 3, 5, 10, 20, 40, 60)) -> pd.DataFrame:
        """Table 3: the share of Σr held by the top x % of parameters (exact; float64 sums)."""
        scorer = self._scorer()
        ths = self.thresholds(xs)
        sums = [0.0] * len(xs)
        total = 0.0
        tie_val = [th.value() for th in ths]
        for i in range(len(self.names)):
            r = relative_change(self.params[self.names[i]].detach(), self._base(self.names[i])).reshape(-1)
            keys = _bits(r)
            total += float(r.double().sum())
            for j, th in enumerate(ths):
                sums[j] += float(r[keys > th.key].double().sum())
        for j, th in enumerate(ths):
            if th.count:
                sums[j] += th.ties * tie_val[j]
        del scorer
        return pd.DataFrame({"top_percent": list(xs), "count": [t.count for t in ths],
                             "threshold": tie_val, "share": [s / total if total else math.nan for s in sums]})

    # -- restore / undo
    @torch.no_grad()
    def restore(self, k_percent: float, strategy: str = "top", seed: int = 0) -> Selection:
        if self._undo is not None:
            self.undo()
        scorer = self._scorer(strategy, seed)
        th = self.thresholds([k_percent], strategy, seed)[0]
        undo, per = [], {}
        for i, mask in _masks(scorer, th):
            name = self.names[i]
            n = int(mask.sum())
            per[name] = n
            if not n:
                continue
            flat = self.params[name].data.view(-1)
            mask = mask.to(flat.device)
            undo.append((name, mask, flat[mask].clone()))
            flat[mask] = self._base(name).reshape(-1).to(device=flat.device, dtype=flat.dtype)[mask]
        self._undo = undo
        return Selection(k_percent, strategy, th.count, self.total, th.value(strategy == "bottom"), per)

    @torch.no_grad()
    def restore_layers(self, layers: Iterable[int]) -> Selection:
        """Table 11: every region parameter of the given decoder layers back to pre-trained."""
        if self._undo is not None:
            self.undo()
        layers = set(layers)
        undo, per = [], {}
        for name in self.names:
            if layer_of(name) in layers:
                p = self.params[name].data
                undo.append((name, None, p.clone()))
                p.copy_(self._base(name).to(device=p.device, dtype=p.dtype))
                per[name] = p.numel()
        self._undo = undo
        count = sum(per.values())
        return Selection(100.0 * count / self.total, "layers", count, self.total, math.nan, per)

    @torch.no_grad()
    def undo(self) -> None:
        """Back to the fine-tuned weights, bit for bit."""
        for name, mask, values in self._undo or []:
            p = self.params[name].data
            if mask is None:
                p.copy_(values)
            else:
                p.view(-1)[mask] = values
        self._undo = None

    @contextlib.contextmanager
    def restored(self, k_percent: float, strategy: str = "top", seed: int = 0):
        sel = self.restore(k_percent, strategy, seed)
        try:
            yield sel
        finally:
            self.undo()

    @contextlib.contextmanager
    def layers_restored(self, layers: Iterable[int]):
        sel = self.restore_layers(layers)
        try:
            yield sel
        finally:
            self.undo()

    # -- where the selection sits
    def distribution(self, selection: Selection) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Tables 9 and 10: the share of the selected elements per layer and per module type."""
        return distribution(selection)


def distribution(selection: Selection) -> tuple[pd.DataFrame, pd.DataFrame]:
    total = sum(selection.per_tensor.values()) or 1
    by_layer: dict[int, int] = {}
    by_module: dict[str, int] = {}
    for name, n in selection.per_tensor.items():
        layer = layer_of(name)
        if layer is not None:
            by_layer[layer] = by_layer.get(layer, 0) + n
        mt = module_type(name)
        by_module[mt] = by_module.get(mt, 0) + n
    per_layer = pd.DataFrame({"layer": sorted(by_layer), "count": [by_layer[k] for k in sorted(by_layer)]})
    per_layer["share"] = per_layer["count"] / total
    order = [m for m in [*MODULE_TYPES.values(), "other"] if m in by_module]
    per_module = pd.DataFrame({"module": order, "count": [by_module[m] for m in order]})
    per_module["share"] = per_module["count"] / total
    return per_layer, per_module


def _base_getter(base) -> Callable[[str], torch.Tensor]:
    if isinstance(base, dict):
        return lambda n: base[n]
    if isinstance(base, torch.nn.Module):
        params = dict(base.named_parameters())
        return lambda n: params[n].detach()
    from .checkpoints import Checkpoint
    ckpt = Checkpoint(base)
    return ckpt.get


# --------------------------------------------------------------------------------------------- CLI
def restore_cli(args) -> int:
    from .checkpoints import restore_checkpoints
    return restore_checkpoints(args)
