"""The calibrated mastery estimator, and how well it agrees with the paper's sampling estimator (issue 17).

Calibration. The likelihood estimator gives, per (fact, template), p_t = P(a sample starts with the answer, directly
or after a lead-in token). Sampling counts answers anywhere in 32 tokens, so its success rate q_t is higher, by a
factor that depends on the relation (language names come in lists, continents after "the continent of" ...).
Per relation r we take

    q_t = 1 - (1 - p_t) ** alpha_r            (alpha_r > 0; alpha_r = 1 is no change)

which is monotone in p_t, keeps 0 at 0 and 1 at 1, and reads as "the answer gets alpha_r chances to appear".
alpha_r is fitted by the method of moments on a sampled subset: the relation's mean q over its calibration
(fact, template) pairs equals their sampled success rate (a root of a monotone function: deterministic, no
randomness). R = mean_t q_t, put on the sampling grid; the category follows from R. A relation without calibration
facts keeps alpha = 1 (and says so).

Agreement. A subset of facts spread over relations and sets is sampled twice, with seeds ``probe.seed`` and
``probe.seed + 1``: two runs of the paper's estimator. How often two sampling runs agree is the ceiling any
estimator can be held to. The estimator's categories on those facts are computed *cross-fitted* (alpha from the
other folds of facts), so no fact calibrates its own estimate; they are compared with both runs: exact category
agreement, Spearman's rho with a bootstrap interval, the confusion matrix and mean R.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd
from scipy.optimize import brentq

from .data.facts import Fact
from .data.facts import CATEGORIES
from .mastery import category, on_grid

_LOG_ALPHA = (-4.0, 8.0)          # alpha between e^-4 and e^8: anything outside is clamped (and reported)
FOLDS = 5


def transform(p, alpha: float):
    """q = 1 - (1 - p)^alpha, elementwise (p clipped to [0, 1])."""
    return 1.0 - np.power(1.0 - np.clip(np.asarray(p, dtype=float), 0.0, 1.0), alpha)


def fit_alpha(p: Sequence[float], q_sampled: Sequence[float]) -> float:
    """The alpha whose mean transform(p) equals mean(q_sampled) (method of moments); the bounds when no root."""
    p, target = np.asarray(p, dtype=float), float(np.mean(q_sampled))
    f = lambda la: float(transform(p, math.exp(la)).mean()) - target      # noqa: E731  (increasing in la)
    lo, hi = _LOG_ALPHA
    if f(lo) >= 0:
        return math.exp(lo)
    if f(hi) <= 0:
        return math.exp(hi)
    return math.exp(brentq(f, lo, hi, xtol=1e-10))


@dataclass
class Calibration:
    """alpha per relation, and how many (fact, template) pairs each rests on."""
    alpha: dict[str, float] = field(default_factory=dict)
    pairs: dict[str, int] = field(default_factory=dict)

    def apply(self, likelihood: pd.DataFrame, n_samples: int) -> pd.DataFrame:
        """A likelihood probe table -> the calibrated one (template_rates become q_t; R and category follow)."""
        out = likelihood.copy()
        rates, rs, cats = [], [], []
        for rel, tr in zip(out["relation"], out["template_rates"]):
            q = transform(tr, self.alpha.get(rel, 1.0))
            r = on_grid(float(q.mean()), len(q) * n_samples)
            rates.append([round(float(x), 6) for x in q])
            rs.append(r)
            cats.append(category(r))
        out["template_rates"], out["R"], out["category"] = rates, rs, cats
        return out

    def table(self) -> pd.DataFrame:
        return pd.DataFrame({"relation": list(self.alpha), "alpha": list(self.alpha.values()),
                             "calibration pairs": [self.pairs.get(r, 0) for r in self.alpha]})


def fit(likelihood: pd.DataFrame, sampled: pd.DataFrame) -> Calibration:
    """alpha per relation from the facts probed both ways (matched by key, template by template)."""
    m = likelihood[["key", "relation", "template_rates"]].merge(sampled[["key", "template_rates"]], on="key",
                                                                suffixes=("_p", "_s"))
    cal = Calibration()
    for rel, g in m.groupby("relation", sort=True):
        p = np.concatenate([np.asarray(x, dtype=float) for x in g["template_rates_p"]])
        q = np.concatenate([np.asarray(x, dtype=float) for x in g["template_rates_s"]])
        cal.alpha[rel], cal.pairs[rel] = fit_alpha(p, q), len(p)
    return cal


def study_facts(pools: Sequence[Sequence[Fact]], n: int, seed: int) -> list[Fact]:
    """``n`` facts drawn round-robin over relations (seeded), from the given sets together: every relation is in
    the study, and the sets' shares follow their sizes within a relation."""
    rng = random.Random(seed)
    by_rel: dict[str, list[Fact]] = {}
    for facts in pools:
        for f in facts:
            by_rel.setdefault(f.relation, []).append(f)
    queues = {r: rng.sample(v, len(v)) for r, v in sorted(by_rel.items())}
    out: list[Fact] = []
    while len(out) < n and any(queues.values()):
        for r in sorted(queues):
            if queues[r] and len(out) < n:
                out.append(queues[r].pop())
    return out


def cross_fitted(likelihood: pd.DataFrame, sampled: pd.DataFrame, n_samples: int, folds: int = FOLDS):
    """The calibrated estimate of every sampled fact with alpha fitted on the *other* folds (facts in a fixed,
    key-sorted order dealt into ``folds`` folds per relation)."""
    keys = sorted(sampled["key"])
    fold = {}
    for rel in sorted(set(sampled["relation"])):
        for i, k in enumerate(sorted(sampled.loc[sampled["relation"] == rel, "key"])):
            fold[k] = i % folds
    parts = []
    lik = likelihood[likelihood["key"].isin(keys)]
    for f in range(folds):
        train = sampled[[fold[k] != f for k in sampled["key"]]]
        test = lik[[fold.get(k) == f for k in lik["key"]]]
        if len(test):
            parts.append(fit(likelihood, train).apply(test, n_samples))
    return pd.concat(parts, ignore_index=True) if parts else lik.iloc[:0]


def _paired(a: pd.DataFrame, b: pd.DataFrame):
    m = a[["key", "R", "category"]].merge(b[["key", "R", "category"]], on="key", suffixes=("_a", "_b"))
    return m


def compare(a: pd.DataFrame, b: pd.DataFrame, name: str, seed: int = 0) -> dict:
    """Exact category agreement, Spearman's rho of R with a 95 % bootstrap interval over facts, and mean R."""
    from .report.stats_rank import ci_spearman

    m = _paired(a, b)
    rho = ci_spearman(m["R_a"], m["R_b"], seed=seed) if len(m) > 3 else None
    return {"comparison": name, "facts": len(m), "same category": float((m["category_a"] == m["category_b"]).mean()),
            "rho": rho.estimate if rho else math.nan, "rho low": rho.low if rho else math.nan,
            "rho high": rho.high if rho else math.nan, "mean R (first)": float(m["R_a"].mean()),
            "mean R (second)": float(m["R_b"].mean())}


def confusion(a: pd.DataFrame, b: pd.DataFrame, rows: str, cols: str) -> pd.DataFrame:
    """Category confusion matrix, rows = ``a``'s categories."""
    m = _paired(a, b)
    t = pd.crosstab(m["category_a"], m["category_b"]).reindex(index=CATEGORIES, columns=CATEGORIES, fill_value=0)
    t.index.name, t.columns.name = f"{rows} (rows) / {cols} (columns)", None
    return t


def agreement(likelihood: pd.DataFrame, run_a: pd.DataFrame, run_b: pd.DataFrame, n_samples: int,
              model: str) -> dict:
    """The study: the summary table (one row per comparison, the ceiling first), the confusion matrices and the
    target check (the estimator within 5 points of the ceiling's exact agreement, its mean R within 0.02)."""
    est = cross_fitted(likelihood, run_a, n_samples)
    raw = likelihood[likelihood["key"].isin(set(run_a["key"]))]
    rows = [compare(run_a, run_b, "sampling (seed A) vs sampling (seed B): the ceiling"),
            compare(est, run_a, "calibrated estimator vs sampling (seed A), cross-fitted"),
            compare(est, run_b, "calibrated estimator vs sampling (seed B)"),
            compare(raw, run_a, "likelihood, uncalibrated, vs sampling (seed A)")]
    summary = pd.DataFrame(rows)
    summary.insert(0, "model", model)
    ceiling, mine = rows[0]["same category"], rows[1]["same category"]
    check = {"ceiling": ceiling, "estimator": mine, "agreement within 5 points": mine >= ceiling - 0.05,
             "mean R gap": abs(rows[1]["mean R (first)"] - rows[1]["mean R (second)"]),
             "mean R within 0.02": abs(rows[1]["mean R (first)"] - rows[1]["mean R (second)"]) <= 0.02}
    return {"summary": summary, "check": check, "estimate": est,
            "confusion_estimator": confusion(run_a, est, "sampling A", "calibrated estimator"),
            "confusion_ceiling": confusion(run_a, run_b, "sampling A", "sampling B")}


__all__ = ["transform", "fit_alpha", "Calibration", "fit", "study_facts", "cross_fitted", "compare", "confusion",
           "agreement"]
