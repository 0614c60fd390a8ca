"""Which parameters did SFT change most (paper §5.1, App. B.2)? An exact global top-k over streamed tensors.

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
* Ties at T are taken in canonical order: tensors by sorted name, then flat index (``TieBreaker``). The live
  ``sftnb.restoration.restore.Restorer`` and the streaming ``sftnb.restoration.checkpoints.restore_checkpoints`` both walk tensors in that
  order, so they select identical elements.
* count = floor(n * k / 100).

Everything streams in pieces through reused workspace buffers (a large tensor's temporaries stay bounded;
reusing buffers also avoids page faults on every allocation, the main cost on CPU): ``CHUNK`` elements per
piece read from disk, ``PIECE`` per piece of a live model.

The strategies (which end of the ranking, or seeded draws) are registered in ``sftnb.restoration.strategies``; regions (which
tensors take part) and the per-layer / per-module distribution of a selection (Tables 9-10) in ``sftnb.restoration.regions``.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Sequence

import torch

from ..infra.errors import SftnbError
# regions live in sftnb.restoration.regions; re-exported because callers (benchmarks, tests) take them from here
from .regions import REGIONS, distribution, in_region, layer_of, region_names  # noqa: F401
from .strategies import get_strategy

EPS = 1e-8
CHUNK = 1 << 24                     # elements per piece read from disk, and per block of "random" keys
PIECE = 1 << 20                     # elements per piece of a live model (4 MiB buffers: bounded, cache-friendly)
FLIP = 0x7FFFFFFF                   # key -> FLIP - key reverses the order ("bottom")
_HI = 1 << 15                       # keys are < 2^31, so the high 16 bits take 2^15 values
_LO = 1 << 16


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
class Workspace:
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


def chunks(numel: int) -> Iterator[tuple[int, int]]:
    for start in range(0, max(numel, 1), CHUNK):
        yield start, min(start + CHUNK, numel)


def pieces(numel: int) -> Iterator[tuple[int, int]]:
    """Pieces of at most PIECE elements that never cross a CHUNK border (a "random" key block)."""
    for lo, hi in chunks(numel):
        for start in range(lo, max(hi, lo + 1), PIECE):
            yield start, min(start + PIECE, hi)


def _random_keys(seed: int, name: str, start: int, n: int, numel: int, ws: Workspace) -> torch.Tensor:
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
               ws: Workspace, exclude_zero_base: bool = False,
               numel: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Selection keys (int32, >= 0, larger = selected first) of one flat chunk, and its r (None for random).
    ``exclude_zero_base`` counts elements whose pre-trained value is exactly 0 as unchanged (r = 0): there r is
    |s| / 1e-8, which can dwarf every other change (statistics only, see ``Restorer.stats``).
    ``numel``: the whole tensor's size (default: this chunk is the rest of the tensor; "random" needs it).
    The keys may alias the workspace: use them before the next call."""
    n = tuned.numel()
    tuned, base = tuned.reshape(-1), base.reshape(-1)
    how = get_strategy(strategy)
    if not how.ranks_by_change:
        keys = _random_keys(seed, name, start, n, numel if numel is not None else start + n, ws)
        return keys.to(tuned.device), None
    r = relative_change(tuned, base, out=ws.r(n, tuned.device), scratch=ws.get("den", n, device=tuned.device))
    if exclude_zero_base:
        r.masked_fill_(base == 0, 0.0)
    keys = r.view(torch.int32)
    if not how.largest_first:
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
        how = get_strategy(strategy)
        if not self.count or not how.ranks_by_change:
            return math.nan
        k = self.key if how.largest_first else FLIP - self.key
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


class TieBreaker:
    """Turns keys into masks for one threshold, chunk after chunk in canonical order."""

    def __init__(self, th: Threshold, ws: "Workspace | None" = None):
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
