"""Every number the tables and figures compare, with its uncertainty: tidy interval tables from the stored units.

Each evaluation stores per-fact correctness (``sftnb.evaluate.pack_correct``) and each grid unit the per-example
first-token KL, so any comparison can be bootstrapped over the *same* test facts. A *condition* is one training
configuration over its seeds: a [n_seeds, n_facts] array on a domain's facts in a fixed order (category 0's facts,
then 1's, ...) whose strata are the categories. ``sftnb.stats`` turns conditions into intervals (test-fact
bootstrap + seed t-interval) and differences of conditions into paired intervals.

Every function returns a tidy ``DataFrame`` with ``estimate``, ``low``, ``high`` (95 %; accuracies as fractions)
plus what identifies the row; the notebooks save them as CSVs, ``sftnb.figures`` draws and formats them, and
``sftnb.report`` reads the CSVs back to compute the verdicts. Accuracy rows say which aggregate they are:
``Acc`` is the paper's (mean of the five category accuracies; n/a when a category has fewer than
``eval.min_category_facts`` facts), ``Acc (pooled)`` the count-weighted one.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np
import pandas as pd

from .config import scale_order
from .evaluate import unpack_correct
from .mastery import CATEGORIES
from .stats import POSITIVE, Interval, ci_difference, ci_level, ci_mean_items
from .stats_rank import ci_spearman, ci_spearman_within

DOMAINS = ("test", "testood")
AGGREGATES = {"Acc": "category", "Acc (pooled)": "pooled"}


# --------------------------------------------------------------------------------------------- conditions
def domain_correctness(per_set_runs: Sequence[dict], domain: str) -> tuple[np.ndarray, np.ndarray]:
    """([n_runs, n_facts] 0/1, strata [n_facts]) of one domain ("test", "testood") from stored ``per_set`` dicts
    (one per seed), facts ordered by category."""
    names = [f"{domain}-{c}" for c in CATEGORIES]
    rows = [np.concatenate([np.array(unpack_correct(ps[n]["correct"]), dtype=float) if n in ps else np.zeros(0)
                            for n in names]) for ps in per_set_runs]
    first = per_set_runs[0]
    strata = np.concatenate([np.full(first[n]["n"] if n in first else 0, c) for c, n in zip(CATEGORIES, names)])
    return np.stack(rows), strata.astype(int)


def set_correctness(per_set_runs: Sequence[dict], name: str) -> np.ndarray:
    """[n_runs, n] 0/1 of one named set (e.g. each run's own training set: the same size, other facts)."""
    return np.stack([np.array(unpack_correct(ps[name]["correct"]), dtype=float) for ps in per_set_runs])


def interval_row(interval: Interval, **ids) -> dict:
    """A tidy row: what identifies it, n_seeds, n_facts and the interval."""
    return {**ids, "n_seeds": interval.n_seeds, "n_facts": interval.n_items, "estimate": interval.estimate,
            "low": interval.low, "high": interval.high}


def level_rows(per_set_runs: Sequence[dict], min_facts: int, categories: bool = True, **ids) -> list[dict]:
    """Acc, Acc (pooled) and (``categories``) Acc-i for both domains of one condition."""
    rows = []
    for domain in DOMAINS:
        correct, strata = domain_correctness(per_set_runs, domain)
        if correct.shape[1] == 0:
            continue
        for metric, agg in AGGREGATES.items():
            rows.append(interval_row(ci_level(correct, strata, aggregate=agg, min_per_category=min_facts),
                             domain=domain, metric=metric, **ids))
        for c in CATEGORIES if categories else ():
            sel = strata == c
            if sel.any():
                rows.append(interval_row(ci_level(correct[:, sel], None, aggregate="pooled"), domain=domain,
                                 metric=f"Acc-{c}", **ids))
    return rows


def difference_row(a_runs: Sequence[dict], b_runs: Sequence[dict], domain: str, metric: str, min_facts: int,
                   paired_seeds: bool, **ids) -> dict:
    """Acc(b) - Acc(a) on one domain, paired over facts (and over seeds when they are the same models)."""
    a, strata = domain_correctness(a_runs, domain)
    b, _ = domain_correctness(b_runs, domain)
    iv = ci_difference(a, b, strata, paired_seeds=paired_seeds, aggregate=AGGREGATES[metric],
                       min_per_category=min_facts)
    return interval_row(iv, domain=domain, metric=metric, **ids)


def headline_metric(cells: pd.DataFrame) -> str:
    """The aggregate verdicts use: the paper's Acc where it is defined for every cell, else Acc (pooled)."""
    acc = cells[(cells["metric"] == "Acc") & (cells["domain"] == "test")]
    return "Acc" if len(acc) and acc["estimate"].notna().all() else "Acc (pooled)"


# --------------------------------------------------------------------------------------------- the grid (§3.4)
def group_runs(results: dict) -> dict[tuple, list[tuple[int, dict]]]:
    """{(kind, category, scale): [(seed, unit result), ...]} from {RunKey: unit result or None}."""
    groups: dict[tuple, list] = defaultdict(list)
    for key, res in results.items():
        if res is not None:
            groups[(key.kind, key.category, key.scale)].append((key.seed, res))
    return {g: sorted(v, key=lambda x: x[0]) for g, v in groups.items()}


def _training(kind: str, category) -> str:
    return f"D_train-{category}" if kind == "divided" else kind


def grid_cells(results: dict, min_facts: int, model: str) -> pd.DataFrame:
    """Figure 2 / Table 2: every grid cell's accuracies (levels) over its seeds."""
    rows = []
    for (kind, cat, scale), runs in group_runs(results).items():
        rows += level_rows([r["per_set"] for _, r in runs], min_facts, model=model, kind=kind,
                           training=_training(kind, cat), scale=str(scale))
    return pd.DataFrame(rows)


def scale_differences(results: dict, min_facts: int, model: str, metric: str) -> pd.DataFrame:
    """Phenomenon 1: for every training set, Acc at the largest scale minus Acc at each smaller scale (test
    domain; paired facts, independent seeds): a decline after a peak shows as negative differences."""
    groups = group_runs(results)
    rows = []
    for kind, cat in sorted({(k, c) for k, c, _ in groups}, key=lambda x: (x[0], -1 if x[1] is None else x[1])):
        scales = scale_order(s for k, c, s in groups if (k, c) == (kind, cat))
        top = scales[-1]
        for s in scales[:-1]:
            rows.append(difference_row([r["per_set"] for _, r in groups[(kind, cat, s)]],
                                       [r["per_set"] for _, r in groups[(kind, cat, top)]], "test", metric,
                                       min_facts, paired_seeds=False, model=model, kind=kind,
                                       training=_training(kind, cat), scale=str(s), versus=str(top)))
    return pd.DataFrame(rows)


def category_differences(results: dict, min_facts: int, model: str, metric: str) -> pd.DataFrame:
    """Table 2 / Phenomenon 2: at the largest scale every training category has, Acc(D_train-j) - Acc(D_train-i)
    for every pair i < j, both domains (paired facts, independent seeds)."""
    groups = {g: v for g, v in group_runs(results).items() if g[0] == "divided"}
    if not groups:
        return pd.DataFrame()
    top = scale_order(s for _, _, s in groups)[-1]
    cats = sorted(c for _, c, s in groups if s == top)
    rows = []
    for i, a in enumerate(cats):
        for b in cats[i + 1:]:
            for domain in DOMAINS:
                rows.append(difference_row([r["per_set"] for _, r in groups[("divided", a, top)]],
                                           [r["per_set"] for _, r in groups[("divided", b, top)]], domain, metric,
                                           min_facts, paired_seeds=False, model=model, scale=str(top),
                                           training=f"D_train-{b}", versus=f"D_train-{a}"))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------- §4
def kl_cells(results: dict, category: int, model: str) -> pd.DataFrame:
    """Figures 4 and 5: per divided cell, the mean first-token KL over the §4.1 examples and seeds, and
    Acc_test-``category`` (the paper's D_test-4), with intervals."""
    rows = []
    for (kind, cat, scale), runs in group_runs(results).items():
        if kind != "divided":
            continue
        kl = np.array([r["kl"] for _, r in runs], dtype=float)
        ids = {"model": model, "training": f"D_train-{cat}", "scale": str(scale)}
        if kl.size:
            rows.append(interval_row(ci_mean_items(kl, bounds=POSITIVE), metric="KL", **ids))
        name = f"test-{category}"
        if name in runs[0][1]["per_set"] and runs[0][1]["per_set"][name]["n"]:
            correct = set_correctness([r["per_set"] for _, r in runs], name)
            rows.append(interval_row(ci_level(correct, None, aggregate="pooled"), metric=f"Acc_test-{category}", **ids))
    return pd.DataFrame(rows)


def kl_scale_differences(results: dict, model: str) -> pd.DataFrame:
    """Finding 1 (§4.2): KL at each scale minus KL at the previous scale, per training category (paired over the
    same §4.1 examples, independent seeds): "first decreases, then increases" is a negative then a positive
    step."""
    groups = {g: v for g, v in group_runs(results).items() if g[0] == "divided"}
    rows = []
    for cat in sorted({c for _, c, _ in groups}):
        scales = scale_order(s for _, c, s in groups if c == cat)
        for prev, nxt in zip(scales, scales[1:]):
            a = np.array([r["kl"] for _, r in groups[("divided", cat, prev)]], dtype=float)
            b = np.array([r["kl"] for _, r in groups[("divided", cat, nxt)]], dtype=float)
            if a.size == 0 or b.size == 0:
                continue
            iv = ci_difference(a, b, None, paired_seeds=False, aggregate="pooled")
            rows.append(interval_row(iv, model=model, training=f"D_train-{cat}", scale=str(nxt), versus=str(prev),
                             metric="KL"))
    return pd.DataFrame(rows)


def kl_accuracy_correlation(results: dict, category: int, model: str) -> pd.DataFrame:
    """Finding 2 (§4.2): Spearman's rho between a divided model's mean KL and its Acc_test-``category``, over the
    fine-tuned models of the grid (one point per run), with a bootstrap interval over runs."""
    pts = [(float(np.mean(r["kl"])), r["metrics"].get(f"acc_test-{category}"))
           for key, r in results.items() if r is not None and key.kind == "divided" and r.get("kl")]
    pts = [(k, a) for k, a in pts if a is not None and np.isfinite(a)]
    if len(pts) < 4:
        return pd.DataFrame([{"model": model, "metric": f"rho(KL, Acc_test-{category})", "n_runs": len(pts),
                              "estimate": np.nan, "low": np.nan, "high": np.nan}])
    iv = ci_spearman([p[0] for p in pts], [p[1] for p in pts])
    return pd.DataFrame([{"model": model, "metric": f"rho(KL, Acc_test-{category})", "n_runs": len(pts),
                          "estimate": iv.estimate, "low": iv.low, "high": iv.high}])


def kl_accuracy_within_scale(results: dict, category: int, model: str, min_scale: int = 60) -> pd.DataFrame:
    """Finding 2 (§4.2) within scale: Spearman's rho(KL, Acc_test-``category``) over the divided runs of each scale,
    and pooled within scale over the scales >= ``min_scale`` (the paper's range) with a bootstrap over cells,
    seeds nested in cells (``stats.ci_spearman_within``): the primary row. The rho over all runs pooled across
    scales is kept beside it as ``descriptive``: scale drives KL and accuracy together, so it can reverse."""
    pts = [(key, float(np.mean(r["kl"])), r["metrics"].get(f"acc_test-{category}"))
           for key, r in results.items() if r is not None and key.kind == "divided" and r.get("kl")]
    pts = [(k, kl, a) for k, kl, a in pts if a is not None and np.isfinite(a)]
    metric = f"rho(KL, Acc_test-{category})"
    rows = []

    def add(iv, what, scales, role):
        rows.append({"model": model, "metric": metric, "what": what, "scales": scales, "role": role,
                     "n_runs": iv.n_items, "estimate": iv.estimate, "low": iv.low, "high": iv.high})

    def order(points):
        return [str(s) for s in scale_order({str(p[0].scale) for p in points})]

    inside = [p for p in pts if _scale_at_least(p[0].scale, min_scale)]
    add(ci_spearman_within([p[1] for p in inside], [p[2] for p in inside], [str(p[0].scale) for p in inside],
                           [f"{p[0].category}@{p[0].scale}" for p in inside]) if inside
        else Interval(np.nan, np.nan, np.nan), "within scale (stratified)", " ".join(order(inside)), "primary")
    for scale in order(pts):
        sub = [p for p in pts if str(p[0].scale) == scale]
        add(ci_spearman([p[1] for p in sub], [p[2] for p in sub]) if len(sub) >= 4 else
            Interval(np.nan, np.nan, np.nan, n_items=len(sub)), f"at n={scale}", scale, "secondary")
    if len(pts) >= 4:
        add(ci_spearman([p[1] for p in pts], [p[2] for p in pts]), "pooled over scales", " ".join(order(pts)),
            "descriptive")
    return pd.DataFrame(rows)


def _scale_at_least(scale, n: int) -> bool:
    return not str(scale).isdigit() or int(scale) >= n          # "All" (the whole category) is the largest


def kl_u_rows(results: dict, model: str, pivot: str = "240") -> pd.DataFrame:
    """Finding 1 (§4.2), pre-specified around the paper's minimum (``pivot`` = 240): per training category, KL at
    the pivot minus KL at the smallest scale ("first decreases") and KL at the largest scale minus KL at the
    pivot ("then increases"); paired over the §4.1 examples, independent seeds. Empty without the pivot and a
    scale on each side of it."""
    groups = {g: v for g, v in group_runs(results).items() if g[0] == "divided"}
    rows = []
    for cat in sorted({c for _, c, _ in groups}):
        scales = scale_order(str(s) for _, c, s in groups if c == cat)
        if pivot not in scales or scales[0] == pivot or scales[-1] == pivot:
            continue
        by = {str(s): np.array([r["kl"] for _, r in v], dtype=float) for (_, c, s), v in groups.items() if c == cat}
        for step, (a, b) in (("decrease", (scales[0], pivot)), ("increase", (pivot, scales[-1]))):
            iv = ci_difference(by[a], by[b], None, paired_seeds=False, aggregate="pooled")
            rows.append(interval_row(iv, model=model, training=f"D_train-{cat}", step=step, scale=b, versus=a, metric="KL"))
    return pd.DataFrame(rows)


def category_spread_rows(results: dict, min_facts: int, model: str, metric: str, low: int = 0,
                         high: int = 2) -> pd.DataFrame:
    """Phenomenon 2, the paper's pair at every scale: Acc(D_train-``high``) - Acc(D_train-``low``) (test domain;
    paired facts, independent seeds), so its value at the largest scale and its growth from the smallest can be
    tested."""
    groups = {g: v for g, v in group_runs(results).items() if g[0] == "divided"}
    rows = []
    for scale in scale_order({str(s) for _, _, s in groups}):
        a = next((v for (_, c, s), v in groups.items() if c == low and str(s) == scale), None)
        b = next((v for (_, c, s), v in groups.items() if c == high and str(s) == scale), None)
        if a and b:
            rows.append(difference_row([r["per_set"] for _, r in a], [r["per_set"] for _, r in b], "test", metric,
                                       min_facts, paired_seeds=False, model=model, scale=scale,
                                       training=f"D_train-{high}", versus=f"D_train-{low}"))
    return pd.DataFrame(rows)


def testbed_rows(testbed: pd.DataFrame, model: str) -> pd.DataFrame:
    """The testbed's ground truth (``Experiment.testbed``): per exposure count, the mean R after injection with its
    interval over facts, before injection, and the category distribution; Spearman's rho(exposure, R) over the
    injected facts; interference: R after minus R before on facts never shown (exposure 0) and on facts outside
    the plan, paired over the same facts."""
    rows = []
    planned = testbed[testbed["exposure"].notna()]
    for count, g in planned.groupby("exposure", sort=True):
        after, before = g["R"].to_numpy(dtype=float), g["R_before"].to_numpy(dtype=float)
        cats = np.bincount(g["category"].to_numpy(dtype=int), minlength=5)
        rows.append(interval_row(ci_level(after, None, aggregate="pooled"), model=model, what="mean R after injection",
                         exposure=int(count), R_before=float(before.mean()),
                         **{f"category {c}": int(cats[c]) for c in CATEGORIES}))
    rho = ci_spearman(planned["exposure"].to_numpy(dtype=float), planned["R"].to_numpy(dtype=float))
    rows.append(interval_row(rho, model=model, what="Spearman rho(exposure, R)"))
    for what, g in (("R change, exposure-0 facts", planned[planned["exposure"] == 0]),
                    ("R change, facts outside the plan", testbed[testbed["exposure"].isna()])):
        if len(g):
            iv = ci_difference(g["R_before"].to_numpy(dtype=float), g["R"].to_numpy(dtype=float), None,
                               paired_seeds=True, aggregate="pooled")
            rows.append(interval_row(iv, model=model, what=what, R_before=float(g["R_before"].mean())))
    return pd.DataFrame(rows)


def pick(frame: pd.DataFrame, **where) -> pd.DataFrame:
    """Rows of a tidy table matching every ``column=value`` (a small helper for notebooks and the report)."""
    mask = np.ones(len(frame), dtype=bool)
    for col, val in where.items():
        mask &= (frame[col] == val).to_numpy() if not isinstance(val, (list, tuple, set)) \
            else frame[col].isin(val).to_numpy()
    return frame[mask]


__all__ = ["domain_correctness", "interval_row", "DOMAINS", "AGGREGATES", "set_correctness", "level_rows", "difference_row", "headline_metric", "grid_cells",
           "scale_differences", "category_differences", "kl_cells", "kl_scale_differences",
           "kl_accuracy_correlation", "kl_accuracy_within_scale", "kl_u_rows", "category_spread_rows",
           "pick",
           "group_runs", "testbed_rows"]
