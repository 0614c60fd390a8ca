"""The verdict vocabulary and the small mechanics every claim rule shares.

A *claim* is one statement of the paper, tested by a rule on tidy rows (``estimate``, ``low``, ``high`` at 95 %,
one row per comparison). Each rule names its *domain* -- the scales, k, categories and metric where the paper
makes the statement -- and gives one of five words:

* **shown** -- the run is inside the domain and its pre-specified comparison(s) support the statement;
* **opposite** -- inside the domain, and they support its reverse (spelled out rule by rule);
* **inconclusive** -- inside the domain, and they support neither (intervals that include the threshold, or
  parts that disagree);
* **out of range** -- the run lacks what the domain needs (for example a scale >= 960); the line says what;
* **no data** -- the run (or the paper) produced none of the tables the claim needs.

Multiplicity. A claim tests one primary comparison, or a pre-specified family of them (one per training set,
or the parts of a two-part statement). A family's comparisons are judged after Holm's step-down correction at
5 % (``holm_signs``): a comparison counts as significant only if its Holm-adjusted p-value is below 0.05. The
p-value of a row is read from its interval (``p_value``: the two-sided normal p-value whose 95 % interval has the
row's half-width on the side of the threshold), so a single comparison is significant exactly when its interval
excludes the threshold. Other rows a rule prints are labelled *secondary* (not corrected, never a verdict) or
*descriptive*.

``combine_independent`` adds the intervals of independent estimates (different fine-tuned models) as variances
add: the half-width of sum_i w_i x_i is sqrt(sum_i (w_i h_i)^2), side by side for asymmetric intervals. Estimates
that share test facts are positively correlated through them, so the combined interval then errs wide.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
from scipy import stats as sps


SHOWN, OPPOSITE, INCONCLUSIVE, OUT_OF_RANGE, NO_DATA = "shown", "opposite", "inconclusive", "out of range", "no data"
VERDICTS = (SHOWN, OPPOSITE, INCONCLUSIVE, OUT_OF_RANGE, NO_DATA)
DEFINITIONS = {
    SHOWN: "inside the claim's domain, the pre-specified comparisons (Holm-corrected within a family) support the "
           "paper's statement",
    OPPOSITE: "inside the domain, they support the statement's reverse, as each rule spells it out",
    INCONCLUSIVE: "inside the domain, they support neither: intervals include the threshold, or parts disagree",
    OUT_OF_RANGE: "the run lacks what the domain needs (scales, k, categories); the line says what is missing",
    NO_DATA: "none of the tables the claim needs were produced (or the paper prints no numbers for it)",
}
ALPHA = 0.05
_Z = float(sps.norm.ppf(1 - ALPHA / 2))


@dataclass
class Result:
    """One claim on one model: the verdict, the lines that justify it, and the metric it used."""
    model: str
    verdict: str
    lines: list[str] = field(default_factory=list)
    metric: str = ""


@dataclass(frozen=True)
class Claim:
    """One statement of the paper, as a paper section (``sftnb.sections``) declares it: the paper's sentence (a
    key of ``resources/paper_results.json`` "claims"), where the paper makes it (``place``: "§5.2", "App. C.2";
    report.md follows the paper's order of places), its domain, the rule that judges it (a function of a
    ``Tables``; its docstring is the rule as report.md prints it), the artifacts the rule reads (``needs``:
    ``artifacts.Artifact``) and the paper's own numbers for it (``paper``: a sentence)."""
    title: str
    key: str
    place: str
    domain: str
    rule: Callable[["Tables"], list[Result]]
    needs: tuple = ()
    paper: Callable[[], str] = lambda: ""


def paper_position(place: str) -> tuple[int, str]:
    """A place in the paper as a sort key: the main text (§3.4 < §5.2) before the appendices (App. C.2 < E.1)."""
    appendix = place.startswith("App.")
    return int(appendix), place.removeprefix("App.").strip().lstrip("§")


def in_paper_order(claims) -> list[Claim]:
    """The claims in the order of their places in the paper; claims of one place keep the order given."""
    return sorted(claims, key=lambda c: paper_position(c.place))


# --------------------------------------------------------------------------------------------- one comparison
def p_value(row, threshold: float = 0.0) -> float:
    """Two-sided p-value of ``estimate`` against ``threshold`` read from the row's 95 % interval (normal
    approximation; the half-width on the threshold's side). NaN for a row without a finite interval."""
    e, lo, hi = float(row["estimate"]), float(row["low"]), float(row["high"])
    if not (np.isfinite(e) and np.isfinite(lo) and np.isfinite(hi)):
        return float("nan")
    d = e - threshold
    half = (e - lo) if d >= 0 else (hi - e)
    if half <= 0:
        return 0.0 if d != 0 else 1.0
    return float(2 * sps.norm.sf(abs(d) / (half / _Z)))


def holm(p) -> np.ndarray:
    """Holm-adjusted p-values (NaN stays NaN and does not count towards the family size)."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = ok.size
    running = 0.0
    for rank, i in enumerate(ok[np.argsort(p[ok], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def holm_signs(rows, expected, thresholds=0.0) -> list[int]:
    """For a family of comparisons (an iterable of rows), each one's sign after Holm's correction: +1 when it is
    significant on the ``expected`` side (+1: above the threshold, -1: below), -1 on the other side, 0 when not
    significant. ``expected`` and ``thresholds`` are one value or one per row."""
    rows = list(rows)
    n = len(rows)
    exp = list(expected) if np.ndim(expected) else [expected] * n
    thr = list(thresholds) if np.ndim(thresholds) else [thresholds] * n
    adj = holm([p_value(r, t) for r, t in zip(rows, thr)])
    signs = []
    for r, e, t, p in zip(rows, exp, thr, adj):
        if not (np.isfinite(p) and p < ALPHA):
            signs.append(0)
        else:
            signs.append(e if float(r["estimate"]) > t else -e)
    return signs


def verdict_of(sign: int) -> str:
    return {1: SHOWN, -1: OPPOSITE, 0: INCONCLUSIVE}[sign]


def combine(verdicts: list[str]) -> str:
    """Several training sets, each judged: shown when at least half are and none is opposite; mirrored for
    opposite; else inconclusive. ``no data`` entries are ignored."""
    v = [x for x in verdicts if x in (SHOWN, OPPOSITE, INCONCLUSIVE)]
    if not v:
        return NO_DATA
    shown, opposite = v.count(SHOWN), v.count(OPPOSITE)
    if shown * 2 >= len(v) and opposite == 0:
        return SHOWN
    if opposite * 2 >= len(v) and shown == 0:
        return OPPOSITE
    return INCONCLUSIVE


def parts(signs: list[int]) -> str:
    """A statement with several parts, all needed: shown when every part is significant as claimed, opposite
    when at least one is significantly reversed and none is significant as claimed."""
    if signs and all(s == 1 for s in signs):
        return SHOWN
    if any(s == -1 for s in signs) and not any(s == 1 for s in signs):
        return OPPOSITE
    return INCONCLUSIVE


def superlative(signs: list[int]) -> str:
    """A statement that one group is the most (least) of several, tested by its comparisons with each other:
    shown when every comparison is significant as claimed, opposite when any is significantly reversed (another
    group is significantly more, or less), else inconclusive."""
    if signs and all(s == 1 for s in signs):
        return SHOWN
    return OPPOSITE if any(s == -1 for s in signs) else INCONCLUSIVE


# --------------------------------------------------------------------------------------------- combining rows
def combine_independent(rows, weights) -> dict:
    """sum_i w_i x_i of independent estimates with its interval (variances add; see the module doc). Rows are
    mappings with estimate/low/high; the result is one too (with n_seeds the smallest of the inputs)."""
    rows = list(rows)
    e = np.array([float(r["estimate"]) for r in rows])
    lo = np.array([float(r["low"]) for r in rows])
    hi = np.array([float(r["high"]) for r in rows])
    w = np.asarray(weights, dtype=float)
    est = float((w * e).sum())
    down = np.where(w >= 0, w * (e - lo), -w * (hi - e))      # how far each term can pull the sum down
    up = np.where(w >= 0, w * (hi - e), -w * (e - lo))
    seeds = [int(r.get("n_seeds", 1)) for r in rows if pd.notna(r.get("n_seeds", 1))]
    return {"estimate": est, "low": est - float(np.sqrt((down ** 2).sum())),
            "high": est + float(np.sqrt((up ** 2).sum())), "n_seeds": min(seeds) if seeds else 1}


def mean_of(rows) -> dict:
    rows = list(rows)
    return combine_independent(rows, [1.0 / len(rows)] * len(rows))


def difference_of(b, a) -> dict:
    """b - a of two independent estimates."""
    return combine_independent([b, a], [1.0, -1.0])


# --------------------------------------------------------------------------------------------- domains
# where the paper makes its statements (each rule's docstring says which it uses)
LARGE = 960          # "the paper's large scale": its sentences are about n = 1,920; 960 is the next scale below
PEAK = "240"         # the paper's peak (Phenomenon 1) and KL minimum (Finding 1)
K_PAPER = 20.0       # "restoring 20% of the parameters enhances the performance of all models" (§5.2)
TASK_MARGIN = 0.02   # Table 5: a task score "kept" = not more than 2 points (of 100) below the unrestored model


# --------------------------------------------------------------------------------------------- tables
class Tables(dict):
    """Artifact name -> tidy DataFrame (possibly empty); ``of(name, model)`` selects one model's rows with the
    scale column as strings."""

    def of(self, name: str, model: str | None = None) -> pd.DataFrame:
        df = self.get(name)
        if df is None or df.empty:
            return pd.DataFrame()
        if model is not None and "model" in df.columns:
            df = df[df["model"] == model]
        if "scale" in df.columns:
            df = df.assign(scale=df["scale"].astype(str))
        return df.reset_index(drop=True)

    def models(self, *names: str) -> list[str]:
        seen: dict[str, None] = {}
        for n in names:
            df = self.get(n)
            if df is not None and len(df) and "model" in df.columns:
                seen.update(dict.fromkeys(df["model"].astype(str)))
        return list(seen)


def n_of(scale) -> float:
    """A scale as a number: "all" (the whole category) is the largest; a scale the paper does not state is NaN."""
    s = str(scale).lower()
    return float("inf") if s == "all" else float(s) if s.replace(".", "", 1).isdigit() else float("nan")


def scales_of(values) -> list[str]:
    """Distinct scales as strings, in the paper's order (numbers ascending, "all", then unstated ones)."""
    return sorted({str(v) for v in values}, key=lambda s: (np.isnan(n_of(s)), n_of(s) if not np.isnan(n_of(s)) else 0, s))


def have(scales) -> str:
    return ", ".join(scales_of(scales)) if len(scales) else "none"


def headline(df: pd.DataFrame) -> str:
    acc = df[df["metric"] == "Acc"] if "metric" in df.columns else df
    return "Acc" if len(acc) and acc["estimate"].notna().all() else "Acc (pooled)"


def large(scales) -> str | None:
    """The largest scale if it is >= LARGE, else None."""
    s = scales_of(scales)
    return s[-1] if s and n_of(s[-1]) >= LARGE else None


def family_lines(rows: list, signs: list[int], label, scale: float = 100, digits: int = 1,
                 diff: bool = True) -> list[str]:
    """One line per comparison of a family: its label, interval and Holm mark."""
    return [f"{label(r)}: {fmt(r, scale, digits, diff)}{mark(s)}" for r, s in zip(rows, signs)]


# --------------------------------------------------------------------------------------------- formatting
def fmt(row, scale: float = 100, digits: int = 1, diff: bool = True, threshold: float = 0.0) -> str:
    """'+3.1 [+0.4, +5.8]' (a difference) or '54.1 [50.2, 58.0]' (a level); 'n/a' without an interval."""
    e, lo, hi = (float(row[c]) * scale for c in ("estimate", "low", "high"))
    if not np.isfinite(e):
        return "n/a"
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return f"{e:+.{digits}f} (no interval)" if diff else f"{e:.{digits}f} (no interval)"
    s = "+" if diff else ""
    return f"{e:{s}.{digits}f} [{lo:{s}.{digits}f}, {hi:{s}.{digits}f}]"


def outside(frame: pd.DataFrame, label, scale: float = 100, digits: int = 1, diff: bool = True) -> list[str]:
    """Lines for rows a run has outside a claim's domain: shown for information, never judged."""
    if frame is None or len(frame) == 0:
        return []
    return [f"descriptive, outside the domain: {label(r)}: {fmt(r, scale, digits, diff)}" for _, r in frame.iterrows()]


def mark(sign: int) -> str:
    return {1: " (significant, as claimed)", -1: " (significant, reversed)", 0: ""}[sign]


__all__ = ["Claim", "in_paper_order", "paper_position", "Tables", "LARGE", "PEAK", "K_PAPER", "TASK_MARGIN", "n_of", "scales_of", "have", "headline", "large",
           "family_lines", "VERDICTS", "DEFINITIONS", "SHOWN", "OPPOSITE", "INCONCLUSIVE", "OUT_OF_RANGE", "NO_DATA", "Result",
           "p_value", "holm", "holm_signs", "verdict_of", "combine", "parts", "superlative", "combine_independent", "mean_of",
           "difference_of", "fmt", "mark", "outside"]
