"""Parameter restoration (paper §5.2, App. C, E): put the most-changed parameters back to their pre-trained values.

``Restorer`` works on a live model: ``restore(k)`` writes the pre-trained values of the top (bottom, random) k %
of a region in place, ``restore_layers(group)`` those of whole decoder layers (Table 11); ``undo()`` gives the
fine-tuned values back bit for bit. Which elements are taken comes from ``sftnb.restoration.selection`` (the exact global
radix selection, shared with the on-disk path in ``sftnb.restoration.checkpoints``); both kinds of restoration go through
one loop over the region's pieces, given a selection predicate.

Undo keeps a 1-bit-per-element mask of what changed plus, depending on where the pre-trained weights are:

* ``swap`` mode (the base tensors are in memory with the model's dtype and device, and the caller lets the
  restorer use them as scratch): the selected elements are *exchanged* with the base tensors, which hold the
  fine-tuned values until undo exchanges them back. The exchange is a branch-free XOR swap on the tensors' bits
  (x = (t ^ b) & mask; t ^= x; b ^= x), so its cost does not depend on k, where indexed copies slow down as the
  mask gets less predictable. The CPU experiment uses it on a private copy of the pre-trained region;
* copy mode (anything else, e.g. the pre-trained weights on the host while the model is on a GPU, or read from
  a folder): the overwritten fine-tuned values are kept (memory proportional to k).
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch

from ..infra.errors import SftnbError
from .regions import distribution, model_regions
from .selection import (Pass1, Selection, Threshold, TieBreaker, Workspace, chunk_keys, percent_counts, pieces,
                     radix_pass1, radix_thresholds)
from .strategies import get_strategy

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


def _xor_swap(t: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None, ws: "Workspace") -> None:
    """Exchange t and b where ``mask`` is set, bit for bit and without branches: x = (t ^ b) & m; t ^= x; b ^= x
    (m = all ones where selected). Doing it twice is the identity, so undo is the same call."""
    it = _INT_OF_SIZE[t.element_size()]
    ti, bi = t.view(it), b.view(it)
    n, dev = t.numel(), t.device
    x = ws.get("x", n, it, dev)
    torch.bitwise_xor(ti, bi, out=x)
    if mask is not None:                      # None: the whole piece
        m = ws.get("m", n, it, dev)
        m.copy_(mask).neg_()                  # True -> -1 = all bits set
        x.bitwise_and_(m)
    ti.bitwise_xor_(x)
    bi.bitwise_xor_(x)



# ============================================================================================= live model
def _base_getter(base, what: str = "pre-trained") -> Callable[[str], torch.Tensor]:
    if isinstance(base, dict):
        def get(n):
            if n not in base:
                raise SftnbError(f"{n}: missing from the {what} state")
            return base[n]
        return get
    if isinstance(base, torch.nn.Module):
        params = dict(base.named_parameters(remove_duplicate=False))
        return lambda n: _get_param(params, n, f"the {what} model")
    from .checkpoints import Checkpoint                # a folder: tensors read on demand (memory-bounded)
    ckpt = Checkpoint(base)
    return lambda n: ckpt.read(n) if n in ckpt.meta else _missing(n, what)


def _get_param(params, n, what):
    if n not in params:
        raise SftnbError(f"{n}: missing from {what}")
    return params[n].detach()


def _missing(n, what="pre-trained"):
    raise SftnbError(f"{n}: missing from the {what} checkpoint")


class Restorer:
    """Restore / undo on a fine-tuned model in place, against pre-trained weights.

    ``base``: a model, a state dict, or a Hugging Face folder (read tensor by tensor, never held whole).
    ``swap``: None = automatic: swap mode when the base tensors are in memory with the model's dtype and device
    and not shared (the base tensors then hold the fine-tuned values of the restored elements until ``undo``:
    pass a base nobody else reads meanwhile); copy mode otherwise. Either way undo is bit-exact.
    ``tuned``: where the fine-tuned values are read from (a model, a state dict or a folder; default: ``model``
    itself). With it, ``model`` is only the target, and may be in another dtype: a GPU run restores its bf16
    evaluation copy directly, selecting from the fp32 fine-tuned and pre-trained weights on the host, so the
    device never holds the fp32 model beside it. Casting is elementwise, so the target ends up exactly the cast
    of what restoring the fp32 model would give.
    Statistics (thresholds, histograms) are cached: call ``refresh()`` after changing the weights yourself.
    """

    def __init__(self, model: torch.nn.Module, base, region: str = "transformer", swap: bool | None = None,
                 tuned=None):
        self.model, self.region = model, region
        params = dict(model.named_parameters())
        self.regions = model_regions(model)             # from the model's module tree: any architecture
        self.names = self.regions.require(params, region, "this model")
        self.params = {n: params[n] for n in self.names}
        self._base = _base_getter(base)
        self._tuned = (lambda n: self.params[n].detach()) if tuned is None else _base_getter(tuned, "fine-tuned")
        can_swap = tuned is None and not isinstance(base, (str, bytes)) and not hasattr(base, "__fspath__")
        seen = set()
        for n in self.names:
            p, b = self.params[n], self._base(n)
            if tuple(b.shape) != tuple(p.shape):
                raise SftnbError(f"{n}: shape {tuple(p.shape)} differs from the pre-trained {tuple(b.shape)}")
            if tuned is not None and tuple(self._tuned(n).shape) != tuple(p.shape):
                raise SftnbError(f"{n}: shape {tuple(p.shape)} differs from the fine-tuned "
                                 f"{tuple(self._tuned(n).shape)}")
            if b.dtype != p.dtype or b.device != p.device or not b.is_contiguous() or b.data_ptr() in seen:
                can_swap = False
            seen.add(b.data_ptr())
        if swap and not can_swap:
            raise SftnbError("swap=True needs in-memory, unshared base tensors with the model's dtype and device")
        self.swap = can_swap if swap is None else swap
        self.total = sum(p.numel() for p in self.params.values())
        self._ws = Workspace()
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
        """(name, start, stop, tuned flat piece, base flat piece) in canonical order, both on the model's device
        (a GPU run keeps the pre-trained weights, and with ``tuned`` the fine-tuned ones, on the host: each piece
        travels when needed)."""
        for name in self.names:
            dev = self.params[name].device
            t = self._tuned(name).reshape(-1)
            b = self._base(name).reshape(-1)
            for start, stop in pieces(t.numel()):
                yield name, start, stop, t[start:stop].to(dev), b[start:stop].to(dev)

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
        how = get_strategy(strategy)
        if exclude_zero_base and not how.ranks_by_change:
            raise SftnbError(f"exclude_zero_base applies to strategies that rank by change, not {strategy!r}")
        n = self.total - (self.zero_base_count() if exclude_zero_base else 0)
        counts = percent_counts(n, k_percents)
        self.undo()                                    # statistics are of the fine-tuned weights
        key = (strategy, seed if how.uses_seed else 0, exclude_zero_base)
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
    def _restore_where(self, select: Callable[[str, int, torch.Tensor, torch.Tensor], "torch.Tensor | bool"]
                       ) -> dict[str, int]:
        """The one restoration loop: ``select(name, start, tuned piece, base piece)`` returns a bool mask of the
        piece, True (the whole piece) or False (none of it). Undoes any earlier restoration first."""
        self.undo()
        undo, per = [], dict.fromkeys(self.names, 0)
        self._undo = undo                               # partial progress is undoable too
        for name, start, stop, t, b in self._pieces():
            sel = select(name, start, t, b)
            if sel is False:
                continue
            mask = None if sel is True else sel
            taken = stop - start if mask is None else int(torch.count_nonzero(mask))
            if not taken:
                continue
            per[name] += taken
            packed = None if mask is None else pack_mask(mask)
            undo.append((name, start, stop, packed, self._apply(name, start, stop, mask)))
        return per

    def restore(self, k_percent: float, strategy: str = "top", seed: int = 0) -> Selection:
        """Set the selected k % of the region to the pre-trained values, in place (undoing any earlier one)."""
        th = self.thresholds([k_percent], strategy, seed)[0]
        ties = TieBreaker(th, self._ws)                 # pieces come in canonical order: ties are taken in it
        per = self._restore_where(lambda name, start, t, b: ties.mask(self._keys(strategy, seed, name, start,
                                                                                  t, b)[0]))
        return Selection(k_percent, strategy, th.count, self.total, th.value(strategy), per)

    def restore_layers(self, layers: Iterable[int]) -> Selection:
        """Table 11: every region parameter of the given decoder layers back to pre-trained."""
        layers = set(layers)
        per = self._restore_where(lambda name, start, t, b: self.regions.layer(name) in layers)
        per = {n: c for n, c in per.items() if c}
        count = sum(per.values())
        return Selection(100.0 * count / self.total, "layers", count, self.total, math.nan, per)

    def _apply(self, name, start, stop, mask) -> torch.Tensor | None:
        """Write the base values where ``mask`` is set (everywhere when None) in one piece; return what undo needs
        (None when swapped)."""
        t = self.params[name].data.view(-1)[start:stop]
        if self.swap:
            b = self._base(name).view(-1)[start:stop]
            _xor_swap(t, b, mask, self._ws)
            return None
        b = self._base(name).reshape(-1)[start:stop]
        if mask is None:
            tuned_vals = t.clone()
            t.copy_(b.to(device=t.device, dtype=t.dtype))
            return tuned_vals
        idx = mask.nonzero().squeeze(1)
        tuned_vals = t.index_select(0, idx)
        t.index_copy_(0, idx, b.index_select(0, idx.to(b.device)).to(device=t.device, dtype=t.dtype))
        return tuned_vals

    @torch.no_grad()
    def undo(self) -> None:
        """Back to the fine-tuned weights (and, in swap mode, the base to the pre-trained ones), bit for bit."""
        for name, start, stop, packed, values in self._undo or []:
            t = self.params[name].data.view(-1)[start:stop]
            mask = None if packed is None else unpack_mask(packed, stop - start).to(t.device)
            if self.swap:
                _xor_swap(t, self._base(name).view(-1)[start:stop], mask, self._ws)
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
        """Tables 9 and 10 for a selection (see ``sftnb.restoration.regions.distribution``)."""
        return distribution(selection, self.regions)
