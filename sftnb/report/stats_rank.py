"""Rank correlations with bootstrap intervals (``stats`` holds the accuracy intervals).

Spearman (``ci_spearman``) — rho = Pearson correlation of average ranks; percentile bootstrap over the paired
units: [q_{(1-L)/2}(rho*), q_{(1+L)/2}(rho*)] — the units (relations, categories, ...) are the sample; the
interval is not symmetric, and replicates with a constant resample (rho undefined) are dropped.

``ci_spearman_within`` pools Spearman's rho *within* strata (data scales), with a bootstrap over cells nested in
strata (see its docstring). All randomness comes from numpy.random.default_rng(seed).
"""
from __future__ import annotations

import numpy as np
from scipy import stats as _sps

from ..infra.errors import SftnbError
from .stats import Interval, check_common

CHUNK = 1 << 22       # elements per bootstrap block
NAN = float("nan")


def _spearman_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Spearman's rho of each row pair of x, y [r, n] (average ranks for ties); NaN for a constant row."""
    rx, ry = _sps.rankdata(x, axis=-1), _sps.rankdata(y, axis=-1)
    rx -= rx.mean(axis=-1, keepdims=True)
    ry -= ry.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (rx * ry).sum(-1) / np.sqrt((rx * rx).sum(-1) * (ry * ry).sum(-1))
    return np.clip(rho, -1.0, 1.0)


def ci_spearman(x, y, n_boot: int = 2000, level: float = 0.95, seed=0) -> Interval:
    """Spearman's rho of paired units with a percentile bootstrap over the units; NaN for < 4 units or a
    constant input. No seed component (n_seeds = 1): pass seed-averaged values per unit."""
    check_common(level, n_boot)
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.ndim != 1 or x.shape != y.shape:
        raise SftnbError(f"x and y must be 1-D of the same length, got shapes {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise SftnbError("x or y contains NaN or inf")
    n = x.shape[0]
    rho = _spearman_rows(x[None], y[None])[0] if n >= 4 else NAN
    if not np.isfinite(rho):
        return Interval(NAN, NAN, NAN, level, 1, n)
    rng = np.random.default_rng(seed)
    rows = max(1, CHUNK // n)
    boots = []
    for start in range(0, n_boot, rows):
        idx = rng.integers(0, n, size=(min(rows, n_boot - start), n))
        boots.append(_spearman_rows(x[idx], y[idx]))
    boots = np.concatenate(boots)
    boots = boots[np.isfinite(boots)]                   # constant resamples: rho undefined, dropped
    if boots.size < n_boot // 2:
        return Interval(float(rho), NAN, NAN, level, 1, n)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(rho), float(lo), float(hi), level, 1, n, float(hi - lo) / 2, 0.0)


def ci_spearman_within(x, y, strata, cells, n_boot: int = 2000, level: float = 0.95, seed=0) -> Interval:
    """Spearman's rho *within* strata, pooled: rho_w = sum_s n_s rho_s / sum_s n_s over the strata s (e.g. data
    scales) with at least 4 points, so a variable that drives both x and y across strata (scale) cannot make the
    association. Interval: percentile bootstrap over ``cells`` nested in strata -- each replicate redraws, inside
    every stratum, its cells with replacement and then each drawn cell's points (seeds) with replacement -- since
    points of one cell (seeds of one configuration) are not independent. NaN with no stratum of 4 points."""
    check_common(level, n_boot)
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    strata, cells = np.asarray(strata).astype(str), np.asarray(cells).astype(str)
    if x.ndim != 1 or not (x.shape == y.shape == strata.shape == cells.shape):
        raise SftnbError(f"x, y, strata and cells must be 1-D of one length, got {x.shape}, {y.shape}, "
                         f"{strata.shape}, {cells.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise SftnbError("x or y contains NaN or inf")
    groups = [[np.flatnonzero((strata == s) & (cells == c)) for c in dict.fromkeys(cells[strata == s])]
              for s in dict.fromkeys(strata) if (strata == s).sum() >= 4]

    def pooled(index_lists):
        rhos, weights = [], []
        for idx in index_lists:
            r = _spearman_rows(x[idx][None], y[idx][None])[0]
            if np.isfinite(r):
                rhos.append(r)
                weights.append(idx.size)
        return float(np.average(rhos, weights=weights)) if rhos else NAN

    rho = pooled([np.concatenate(g) for g in groups])
    n = int(sum(len(np.concatenate(g)) for g in groups))
    if not np.isfinite(rho):
        return Interval(NAN, NAN, NAN, level, 1, n)
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    for b in range(n_boot):
        draw = []
        for g in groups:
            chosen = [g[i] for i in rng.integers(0, len(g), len(g))]
            draw.append(np.concatenate([c[rng.integers(0, c.size, c.size)] for c in chosen]))
        boots[b] = pooled(draw)
    boots = boots[np.isfinite(boots)]
    if boots.size < n_boot // 2:
        return Interval(rho, NAN, NAN, level, 1, n)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return Interval(rho, float(lo), float(hi), level, 1, n, float(hi - lo) / 2, 0.0)


__all__ = ["ci_spearman", "ci_spearman_within"]
