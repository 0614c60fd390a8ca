"""Parameter restoration (paper §5, App. B.2): put the most-changed parameters back to their pre-trained values.

Relative change r = |s - p| / (|p| + 1e-8), element-wise, in float32 whatever the storage dtype (NaN counts as
0). Selecting the top k % of r *globally* (across every tensor of a region) is done exactly, without a flat copy
of all r:

* Keys. r >= 0, so its float32 bit pattern read as int32 is a non-negative integer, monotone in r. "bottom"
  flips the key (0x7FFFFFFF - key); "random" uses the bits of i.i.d. uniform floats drawn per chunk from a
  generator seeded by (seed, tensor name, chunk index): reproducible, exactly ``count`` elements, no
  n-element permutation.
* Radix select in two streamed passes. Pass 1: a histogram of the high 16 bits of every key (one histogram
  serves every k of a sweep, and is cached). Pass 2: for each k, a histogram of the low 16 bits of the keys
  in that k's high-16 bucket. Together they give the threshold key T (the count-th largest) and how many
  elements equal to T to take. The same passes carry float64 sums of r per bin, so the concentration table
  (Table 3) is exact (sums of everything above T, plus ties x T's value) at no extra pass.
* Ties at T are taken in canonical order: tensors by sorted name, then flat index. The live ``Restorer`` and
  the streaming CLI use that order, so they select identical elements.
* count = floor(n * k / 100).

Everything streams in pieces through reused workspace buffers (a large tensor's temporaries stay bounded;
reusing buffers also avoids page faults on every allocation, the main cost on CPU): ``CHUNK`` elements per
piece read from disk by the CLI, ``PIECE`` per piece of a live model.

``Restorer`` works on a live model: ``restore(k)`` writes pre-trained values in place; ``undo()`` gives the
fine-tuned values back bit for bit. It keeps a 1-bit-per-element mask of what it changed plus either nothing
(``swap`` mode: the selected elements are *exchanged* with the base tensors, which then hold the fine-tuned
values until undo swaps them back) or the overwritten fine-tuned values (memory proportional to k). The swap is
a branch-free XOR swap on the tensors' bits (x = (t ^ b) & mask; t ^= x; b ^= x): its cost does not depend on
k, where indexed copies and ``torch.where`` slow down as the mask gets less predictable.
The CLI (``restore_cli``) applies the same selection to checkpoints on disk (``sftnb.checkpoints``).
"""
from __future__ import annotations

import contextlib
import math
import re
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from .errors import SftnbError

EPS = 1e-8
REGIONS = ("transformer", "mlp", "attention", "embedding", "all")
STRATEGIES = ("top", "bottom", "random")
CHUNK = 1 << 24                     # elements per piece read from disk (CLI), and per block of "random" keys
PIECE = 1 << 20                     # elements per piece of a live model (4 MiB buffers: bounded, cache-friendly)
FLIP = 0x7FFFFFFF                   # key -> FLIP - key reverses the order ("bottom")
_HI = 1 << 15                       # keys are < 2^31, so the high 16 bits take 2^15 values
_LO = 1 << 16
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")
MODULE_TYPES = {"mlp.down_proj": "mlp.down", "mlp.up_proj": "mlp.up", "mlp.gate_proj": "mlp.gate",
                "self_attn.o_proj": "attn.o", "self_attn.q_proj": "attn.q", "self_attn.v_proj": "attn.v",
                "self_attn.k_proj": "attn.k"}


# ============================================================================================= regions
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
    if region == "all":
        return True
    if region == "embedding":
        return "embed_tokens" in name or name.split(".")[0] == "lm_head"
    parts = name.split(".")
    owner = parts[-2] if len(parts) > 1 else name            # "input_layernorm" in "...input_layernorm.weight"
    if layer_of(name) is None or "norm" in owner:
        return False
    if region == "mlp":
        return ".mlp." in name
    if region == "attention":
        return ".self_attn." in name
    return True                          # transformer: every non-norm parameter of a decoder layer


def region_names(names: Iterable[str], region: str) -> list[str]:
    """The region's names in canonical order (sorted): the order that breaks ties."""
    return sorted(n for n in names if in_region(n, region))


def relative_change(tuned: torch.Tensor, base: torch.Tensor, out: torch.Tensor | None = None,
                    scratch: torch.Tensor | None = None) -> torch.Tensor:
    """|s - p| / (|p| + 1e-8) in float32 (App. B.2); NaN becomes 0. ``out``, ``scratch``: float32 buffers of the
    same shape to reuse."""
    s, p = tuned.float(), base.float()
    if out is None:
        out = torch.empty(s.shape, dtype=torch.float32, device=s.device)
    den = torch.abs(p, out=scratch) if scratch is not None else torch.abs(p)
    den.add_(EPS)
    torch.sub(s, p, out=out).abs_().div_(den)
    return out.nan_to_num_(nan=0.0, posinf=math.inf)


# ============================================================================================= keys
class _Workspace:
    """Reused buffers: a fresh multi-MB allocation per tensor costs page faults that dominate on CPU."""

    def __init__(self):
        self.bufs: dict[tuple, torch.Tensor] = {}
        self.rand_block: tuple[tuple, torch.Tensor] | None = None     # the last block of "random" keys

    def get(self, slot: str, n: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
        key = (slot, dtype, str(device))
        buf = self.bufs.get(key)
        if buf is None or buf.numel() < n:
            buf = self.bufs[key] = torch.empty(n, dtype=dtype, device=device)
        return buf[:n]

    def r(self, n: int, device="cpu") -> torch.Tensor:
        return self.get("r", n, device=device)


def _chunks(numel: int) -> Iterator[tuple[int, int]]:
    for start in range(0, max(numel, 1), CHUNK):
        yield start, min(start + CHUNK, numel)


def _pieces_of(numel: int) -> Iterator[tuple[int, int]]:
    """Pieces of at most PIECE elements that never cross a CHUNK border (a "random" key block)."""
    for lo, hi in _chunks(numel):
        for start in range(lo, max(hi, lo + 1), PIECE):
            yield start, min(start + PIECE, hi)


def _random_keys(seed: int, name: str, start: int, n: int, numel: int, ws: _Workspace) -> torch.Tensor:
    """Keys of elements [start, start + n) of a tensor under "random": uniform floats drawn per CHUNK-sized block
    from a generator seeded by (seed, name, block), so they do not depend on how the tensor is walked."""
    block = start // CHUNK
    lo = block * CHUNK
    if start + n > lo + CHUNK:
        raise ValueError("a piece must not cross a CHUNK border")
    ident = (seed, name, block)
    if ws.rand_block is None or ws.rand_block[0] != ident:
        ws.rand_block = (ident, torch.rand(min(CHUNK, numel - lo), generator=_rand_generator(seed, name, lo)))
    return ws.rand_block[1][start - lo:start - lo + n].view(torch.int32)


def _rand_generator(seed: int, name: str, start: int) -> torch.Generator:
    # crc32 of the name (not Python's salted hash) keeps "random" reproducible across processes
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode()) * 131 + start // CHUNK)
                                         % (1 << 63))


def chunk_keys(strategy: str, seed: int, name: str, start: int, tuned: torch.Tensor, base: torch.Tensor,
               ws: _Workspace, exclude_zero_base: bool = False,
               numel: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Selection keys (int32, >= 0, larger = selected first) of one flat chunk, and its r (None for random).
    ``exclude_zero_base`` counts elements whose pre-trained value is exactly 0 as unchanged (r = 0): there r is
    |s| / 1e-8, which can dwarf every other change (statistics only, see ``Restorer.stats``).
    ``numel``: the whole tensor's size (default: this chunk is the rest of the tensor; "random" needs it).
    The keys may alias the workspace: use them before the next call."""
    n = tuned.numel()
    tuned, base = tuned.reshape(-1), base.reshape(-1)
    if strategy == "random":
        keys = _random_keys(seed, name, start, n, numel if numel is not None else start + n, ws)
        return keys.to(tuned.device), None
    r = relative_change(tuned, base, out=ws.r(n, tuned.device), scratch=ws.get("den", n, device=tuned.device))
    if exclude_zero_base:
        r.masked_fill_(base == 0, 0.0)
    keys = r.view(torch.int32)
    if strategy == "bottom":
        keys = FLIP - keys
    return keys, r


@dataclass
class Threshold:
    """Take every element with key > ``key`` and the first ``ties`` elements (canonical order) with key == ``key``."""
    count: int
    key: int
    ties: int
    top_sum: float = math.nan            # Σ r over the selected elements (top strategy, when sums were asked)
    equal: int = -1                      # how many elements have key == ``key`` (-1: unknown)

    def value(self, strategy: str = "top") -> float:
        """The threshold as a relative change (NaN for random keys or an empty selection)."""
        if not self.count or strategy == "random":
            return math.nan
        k = FLIP - self.key if strategy == "bottom" else self.key
        return torch.tensor([k], dtype=torch.int32).view(torch.float32).item()


def _cut(hist: torch.Tensor, need: int) -> tuple[int, int]:
    """Digit d holding the need-th largest element, and how many of bin d are taken."""
    at_least = hist.flip(0).cumsum(0).flip(0)                     # elements with digit >= d
    d = int((at_least >= need).nonzero()[-1])
    return d, need - int(at_least[d] - hist[d])


@dataclass
class Pass1:
    """High-16-bit histogram of every key (and Σ r per bin): shared by every k of a sweep."""
    hist: torch.Tensor
    sums: torch.Tensor | None
    total: int


def radix_pass1(key_stream: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor | None]]],
                with_sums: bool = False) -> Pass1:
    hist = torch.zeros(_HI, dtype=torch.int64)
    sums = torch.zeros(_HI, dtype=torch.float64) if with_sums else None
    for keys, r in key_stream():
        hi = keys >> 16
        hist += torch.bincount(hi, minlength=_HI).cpu()
        if with_sums:
            sums += torch.bincount(hi, weights=r.double(), minlength=_HI).cpu()
    return Pass1(hist, sums, int(hist.sum()))


def radix_thresholds(key_stream: Callable[[], Iterable[tuple[torch.Tensor, torch.Tensor | None]]],
                     counts: Sequence[int], pass1: Pass1 | None = None, with_sums: bool = False) -> list[Threshold]:
    """For each count c, the threshold of the c largest keys over all chunks ``key_stream()`` yields: one pass
    for the high digits (skipped when ``pass1`` is given) and one for the low digits, whatever len(counts)."""
    if pass1 is None or (with_sums and pass1.sums is None):
        pass1 = radix_pass1(key_stream, with_sums)
    hi_cut = {c: _cut(pass1.hist, c) for c in counts if c > 0}
    prefixes = sorted({d for d, _ in hi_cut.values()})
    hist2 = torch.zeros(len(prefixes) * _LO, dtype=torch.int64)
    sums2 = torch.zeros(len(prefixes) * _LO, dtype=torch.float64) if with_sums else None
    if prefixes:
        # one pass, one bincount per chunk for every k: slot_of maps a high digit to its prefix's slot (or -1)
        slot_of = torch.full((_HI,), -1, dtype=torch.int32)
        slot_of[torch.tensor(prefixes)] = torch.arange(len(prefixes), dtype=torch.int32)
        for keys, r in key_stream():
            keys = keys.cpu()
            slot = slot_of.index_select(0, keys >> 16)
            idx = (slot >= 0).nonzero().squeeze(1)          # the few elements in a threshold's bucket
            bins = slot.index_select(0, idx).long() * _LO + (keys.index_select(0, idx) & 0xFFFF)
            hist2 += torch.bincount(bins, minlength=hist2.numel())
            if with_sums:
                sums2 += torch.bincount(bins, weights=r.cpu().index_select(0, idx).double(), minlength=hist2.numel())
    lo_hist = {d: hist2[i * _LO:(i + 1) * _LO] for i, d in enumerate(prefixes)}
    lo_sums = {d: sums2[i * _LO:(i + 1) * _LO] for i, d in enumerate(prefixes)} if with_sums else {}
    out = []
    for c in counts:
        if c <= 0:                                    # nothing has a key above FLIP: selects nothing
            out.append(Threshold(0, FLIP, 0, 0.0))
            continue
        d_hi, need = hi_cut[c]
        d_lo, ties = _cut(lo_hist[d_hi], need)
        key = (d_hi << 16) | d_lo
        th = Threshold(c, key, ties, equal=int(lo_hist[d_hi][d_lo]))
        if with_sums:                                 # everything above the threshold, then the ties exactly
            value = torch.tensor([key], dtype=torch.int32).view(torch.float32).double().item()
            th.top_sum = (float(pass1.sums[d_hi + 1:].sum()) + float(lo_sums[d_hi][d_lo + 1:].sum())
                          + ties * value)
        out.append(th)
    return out


class _TieBreaker:
    """Turns keys into masks for one threshold, chunk after chunk in canonical order."""

    def __init__(self, th: Threshold, ws: "_Workspace | None" = None):
        self.th, self.ties_left, self.ws = th, th.ties, ws
        self.all_ties = th.ties > 0 and th.ties == th.equal      # every key == T is taken: no order to keep

    def mask(self, keys: torch.Tensor) -> torch.Tensor:
        """The chunk's selection (with a workspace: in a reused buffer, valid until the next call)."""
        out = self.ws.get("mask", keys.numel(), torch.bool, keys.device) if self.ws is not None else None
        if self.all_ties:
            return torch.ge(keys, self.th.key, out=out) if out is not None else keys >= self.th.key
        mask = torch.gt(keys, self.th.key, out=out) if out is not None else keys > self.th.key
        if self.ties_left > 0:
            eq = (keys == self.th.key).nonzero().squeeze(1)
            take = eq[: self.ties_left]                # the first ones by flat index
            mask[take] = True
            self.ties_left -= take.numel()
        return mask


def percent_counts(total: int, k_percents: Sequence[float]) -> list[int]:
    for k in k_percents:
        try:
            ok = 0 < float(k) <= 100
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise SftnbError(f"k={k}: restoration percent must lie in (0, 100]")
    return [math.floor(total * k / 100) for k in k_percents]


def check_strategy(strategy: str) -> None:
    if strategy not in STRATEGIES:
        raise SftnbError(f"unknown strategy {strategy!r} (top, bottom or random)")


# ============================================================================================= results
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


def distribution(selection: Selection) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tables 9 and 10: the share of the selected elements per decoder layer and per module type."""
    total = sum(selection.per_tensor.values()) or 1
    by_layer: dict[int, int] = {}
    by_module: dict[str, int] = {}
    for name, n in selection.per_tensor.items():
        layer = layer_of(name)
        if layer is not None:
            by_layer[layer] = by_layer.get(layer, 0) + n
        mt = module_type(name)
        by_module[mt] = by_module.get(mt, 0) + n
    layers = sorted(by_layer)
    per_layer = pd.DataFrame({"layer": layers, "count": [by_layer[k] for k in layers]})
    per_layer["share"] = per_layer["count"] / total
    order = [m for m in [*MODULE_TYPES.values(), "other"] if m in by_module]
    per_module = pd.DataFrame({"module": order, "count": [by_module[m] for m in order]})
    per_module["share"] = per_module["count"] / total
    return per_layer, per_module


# ============================================================================================= 1-bit masks
_BITS = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """bool[n] -> uint8[ceil(n/8)], least significant bit first (undo memory: 1 bit per element of a touched
    piece). On the CPU numpy's packbits does it (several times faster than the tensor arithmetic)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.packbits(mask.numpy(), bitorder="little"))
    pad = (-mask.numel()) % 8
    m = torch.nn.functional.pad(mask.view(torch.uint8), (0, pad)) if pad else mask.view(torch.uint8)
    return (m.view(-1, 8) * _BITS.to(m.device)).sum(1, dtype=torch.uint8)


def unpack_mask(packed: torch.Tensor, n: int) -> torch.Tensor:
    if packed.device.type == "cpu":
        return torch.from_numpy(np.unpackbits(packed.numpy(), count=n, bitorder="little").view(np.bool_))
    return ((packed.unsqueeze(1) & _BITS.to(packed.device)) != 0).view(-1)[:n]


_INT_OF_SIZE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _xor_swap(t: torch.Tensor, b: torch.Tensor, mask: torch.Tensor, ws: "_Workspace") -> None:
    """Exchange t and b where ``mask`` is set, bit for bit and without branches: x = (t ^ b) & m; t ^= x; b ^= x
    (m = all ones where selected). Doing it twice is the identity, so undo is the same call."""
    it = _INT_OF_SIZE[t.element_size()]
    ti, bi = t.view(it), b.view(it)
    n, dev = t.numel(), t.device
    x = ws.get("x", n, it, dev)
    m = ws.get("m", n, it, dev)
    m.copy_(mask).neg_()                      # True -> -1 = all bits set
    torch.bitwise_xor(ti, bi, out=x).bitwise_and_(m)
    ti.bitwise_xor_(x)
    bi.bitwise_xor_(x)


# ============================================================================================= live model
def _base_getter(base) -> Callable[[str], torch.Tensor]:
    if isinstance(base, dict):
        def get(n):
            if n not in base:
                raise SftnbError(f"{n}: missing from the pre-trained state")
            return base[n]
        return get
    if isinstance(base, torch.nn.Module):
        params = dict(base.named_parameters(remove_duplicate=False))
        return lambda n: _get_param(params, n, "the pre-trained model")
    from .checkpoints import Checkpoint                # a folder: tensors read on demand (memory-bounded)
    ckpt = Checkpoint(base)
    return lambda n: ckpt.read(n) if n in ckpt.meta else _missing(n)


def _get_param(params, n, what):
    if n not in params:
        raise SftnbError(f"{n}: missing from {what}")
    return params[n].detach()


def _missing(n):
    raise SftnbError(f"{n}: missing from the pre-trained checkpoint")


class Restorer:
    """Restore / undo on a fine-tuned model in place, against pre-trained weights.

    ``base``: a model, a state dict, or a Hugging Face folder (read tensor by tensor, never held whole).
    ``swap``: None = automatic: when the base tensors are in memory with the model's dtype and device, and not
    shared, restoring *exchanges* the selected elements with them (no copy of the fine-tuned values is kept;
    the base tensors hold the fine-tuned values of the selected elements until ``undo``). Otherwise the
    overwritten fine-tuned values are stored. Either way undo is bit-exact and a 1-bit mask is kept.
    Statistics (thresholds, histograms) are cached: call ``refresh()`` after changing the weights yourself.
    """

    def __init__(self, model: torch.nn.Module, base, region: str = "transformer", swap: bool | None = None):
        self.model, self.region = model, region
        params = dict(model.named_parameters())
        self.names = region_names(params, region)
        if not self.names:
            raise SftnbError(f"region {region!r} holds no parameter of this model")
        self.params = {n: params[n] for n in self.names}
        self._base = _base_getter(base)
        can_swap = not isinstance(base, (str, bytes)) and not hasattr(base, "__fspath__")
        seen = set()
        for n in self.names:
            p, b = self.params[n], self._base(n)
            if tuple(b.shape) != tuple(p.shape):
                raise SftnbError(f"{n}: shape {tuple(p.shape)} differs from the pre-trained {tuple(b.shape)}")
            if b.dtype != p.dtype or b.device != p.device or not b.is_contiguous() or b.data_ptr() in seen:
                can_swap = False
            seen.add(b.data_ptr())
        if swap and not can_swap:
            raise SftnbError("swap=True needs in-memory, unshared base tensors with the model's dtype and device")
        self.swap = can_swap if swap is None else swap
        self.total = sum(p.numel() for p in self.params.values())
        self._ws = _Workspace()
        self._zero_base: int | None = None
        self._undo: list[tuple[str, int, int, torch.Tensor | None, torch.Tensor | None]] | None = None
        self.refresh()

    def refresh(self) -> None:
        """Forget cached statistics (after the fine-tuned weights were changed by something else)."""
        self.undo()
        # keyed by (strategy, seed or 0 when it plays no part, exclude_zero_base) [+ k]
        self._pass1: dict[tuple[str, int, bool], Pass1] = {}
        self._thresholds: dict[tuple[str, int, bool, float], Threshold] = {}

    # ------------------------------------------------------------------------- streaming over the region
    def _pieces(self) -> Iterator[tuple[str, int, int, torch.Tensor, torch.Tensor]]:
        """(name, start, stop, tuned flat chunk, base flat chunk) in canonical order."""
        for name in self.names:
            t = self.params[name].detach().reshape(-1)
            b = self._base(name).reshape(-1)
            for start, stop in _pieces_of(t.numel()):
                yield name, start, stop, t[start:stop], b[start:stop]

    def _keys(self, strategy, seed, name, start, t, b, exclude_zero_base=False):
        return chunk_keys(strategy, seed, name, start, t, b, self._ws, exclude_zero_base,
                          numel=self.params[name].numel())

    def _key_stream(self, strategy: str, seed: int, exclude_zero_base: bool = False):
        def stream():
            for name, start, _, t, b in self._pieces():
                yield self._keys(strategy, seed, name, start, t, b, exclude_zero_base)
        return stream

    def zero_base_count(self) -> int:
        """Region elements whose pre-trained value is exactly 0 (where r = |s| / 1e-8); one pass, cached."""
        if self._zero_base is None:
            self._zero_base = sum(int((b == 0).sum()) for *_, b in self._pieces())
        return self._zero_base

    # ------------------------------------------------------------------------- statistics
    def thresholds(self, k_percents: Sequence[float], strategy: str = "top", seed: int = 0,
                   with_sums: bool = False, exclude_zero_base: bool = False) -> list[Threshold]:
        """Thresholds of several k from (at most) two passes; pass 1 is cached, so later k cost one pass.
        With ``exclude_zero_base`` (top/bottom statistics) k is a percent of the elements whose pre-trained value
        is not 0, and those that are 0 count as unchanged."""
        check_strategy(strategy)
        if exclude_zero_base and strategy == "random":
            raise SftnbError("exclude_zero_base applies to the top and bottom strategies only")
        n = self.total - (self.zero_base_count() if exclude_zero_base else 0)
        counts = percent_counts(n, k_percents)
        self.undo()                                    # statistics are of the fine-tuned weights
        key = (strategy, seed if strategy == "random" else 0, exclude_zero_base)
        missing = [k for k in dict.fromkeys(k_percents)
                   if (*key, k) not in self._thresholds
                   or (with_sums and math.isnan(self._thresholds[(*key, k)].top_sum))]
        if missing:
            stream = self._key_stream(strategy, seed, exclude_zero_base)
            p1 = self._pass1.get(key)
            if p1 is None or (with_sums and p1.sums is None):
                p1 = self._pass1[key] = radix_pass1(stream, with_sums)
            found = radix_thresholds(stream, percent_counts(n, missing), p1, with_sums)
            self._thresholds.update({(*key, k): th for k, th in zip(missing, found)})
        out = [self._thresholds[(*key, k)] for k in k_percents]
        assert [t.count for t in out] == counts
        return out

    prepare = thresholds          # restorer.prepare(ks): every threshold of a sweep up front, in two passes

    def stats(self, k_percents: Sequence[float] = (1, 3, 5, 10, 20, 40, 60), exclude_zero_base: bool = False) -> dict:
        """n, Σr and, per k, the count, the threshold r and the share of Σr above it (two passes).
        ``exclude_zero_base``: leave out the elements whose pre-trained value is exactly 0 (n and Σr shrink)."""
        ths = self.thresholds(k_percents, "top", with_sums=True, exclude_zero_base=exclude_zero_base)
        total_sum = float(self._pass1[("top", 0, exclude_zero_base)].sums.sum())
        n = self.total - (self.zero_base_count() if exclude_zero_base else 0)
        return {"region": self.region, "n": n, "sum_r": total_sum, "exclude_zero_base": exclude_zero_base,
                "per_k": [{"k_percent": k, "count": th.count, "threshold": th.value(),
                           "share": th.top_sum / total_sum if total_sum else math.nan}
                          for k, th in zip(k_percents, ths)]}

    def concentration(self, xs: Sequence[float] = (1, 3, 5, 10, 20, 40, 60),
                      exclude_zero_base: bool = False) -> pd.DataFrame:
        """Table 3: the share of Σr held by the top x % of parameters (exact; float64 sums). The paper's
        definition is the default; ``exclude_zero_base`` shows it without the pre-trained zeros, whose r is only
        bounded by the 1e-8 in the denominator (a quantised checkpoint can have thousands of them)."""
        st = self.stats(xs, exclude_zero_base)
        return pd.DataFrame({"top_percent": list(xs), "count": [d["count"] for d in st["per_k"]],
                             "threshold": [d["threshold"] for d in st["per_k"]],
                             "share": [d["share"] for d in st["per_k"]]})

    # ------------------------------------------------------------------------- restore / undo
    @torch.no_grad()
    def restore(self, k_percent: float, strategy: str = "top", seed: int = 0) -> Selection:
        """Set the selected k % of the region to the pre-trained values, in place (undoing any earlier one)."""
        th = self.thresholds([k_percent], strategy, seed)[0]
        ties = _TieBreaker(th, self._ws)
        undo, per = [], dict.fromkeys(self.names, 0)
        for name, start, stop, t, b in self._pieces():
            keys, _ = self._keys(strategy, seed, name, start, t, b)
            mask = ties.mask(keys)
            taken = int(torch.count_nonzero(mask))
            if not taken:
                continue
            per[name] += taken
            undo.append((name, start, stop, pack_mask(mask), self._apply(name, start, stop, mask)))
            self._undo = undo                       # partial progress is undoable too
        self._undo = undo
        return Selection(k_percent, strategy, th.count, self.total, th.value(strategy), per)

    def _apply(self, name, start, stop, mask) -> torch.Tensor | None:
        """Write the base values where ``mask`` is set in one piece; return what undo needs (None when swapped)."""
        t = self.params[name].data.view(-1)[start:stop]
        if self.swap:
            _xor_swap(t, self._base(name).view(-1)[start:stop], mask, self._ws)
            return None
        b = self._base(name).reshape(-1)[start:stop]
        idx = mask.nonzero().squeeze(1)
        tuned_vals = t.index_select(0, idx)
        t.index_copy_(0, idx, b.index_select(0, idx.to(b.device)).to(device=t.device, dtype=t.dtype))
        return tuned_vals

    @torch.no_grad()
    def restore_layers(self, layers: Iterable[int]) -> Selection:
        """Table 11: every region parameter of the given decoder layers back to pre-trained."""
        self.undo()
        layers = set(layers)
        undo, per = [], {}
        for name in self.names:
            if layer_of(name) not in layers:
                continue
            t = self.params[name].data
            if self.swap:
                b = self._base(name)
                tmp = t.clone()
                t.copy_(b)
                b.copy_(tmp)
                undo.append((name, 0, t.numel(), None, None))
            else:
                undo.append((name, 0, t.numel(), None, t.clone().view(-1)))
                t.copy_(self._base(name).to(device=t.device, dtype=t.dtype))
            per[name] = t.numel()
            self._undo = undo
        self._undo = undo
        count = sum(per.values())
        return Selection(100.0 * count / self.total, "layers", count, self.total, math.nan, per)

    @torch.no_grad()
    def undo(self) -> None:
        """Back to the fine-tuned weights (and, in swap mode, the base to the pre-trained ones), bit for bit."""
        for name, start, stop, packed, values in self._undo or []:
            t = self.params[name].data.view(-1)[start:stop]
            mask = None if packed is None else unpack_mask(packed, stop - start).to(t.device)
            if self.swap:
                b = self._base(name).view(-1)[start:stop]
                if mask is None:
                    tmp = t.clone()
                    t.copy_(b)
                    b.copy_(tmp)
                else:
                    _xor_swap(t, b, mask, self._ws)
            elif mask is None:
                t.copy_(values)
            else:
                t.index_copy_(0, mask.nonzero().squeeze(1), values)
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

    def distribution(self, selection: Selection) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Tables 9 and 10 for a selection (see ``distribution``)."""
        return distribution(selection)


# ============================================================================================= CLI
def restore_cli(args) -> int:
    """``sftnb restore``: the streaming path over checkpoints on disk (``sftnb.checkpoints``)."""
    from .checkpoints import restore_checkpoints
    from .models import EMBEDDED, model_folder

    # the embedded default by name: its cached safetensors folder (converted from the GGUF on first use)
    base, tuned = (model_folder(x) if x == EMBEDDED else x for x in (args.base, args.tuned))
    return restore_checkpoints(base=base, tuned=tuned, k=args.k, out=args.out, strategy=args.strategy,
                               region=args.region, seed=args.seed, shard_size=args.shard_size,
                               overwrite=args.overwrite)
