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
from .stats import Interval, ci_difference, ci_level, ci_mean_items, ci_spearman

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


def _row(interval: Interval, **ids) -> dict:
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
            rows.append(_row(ci_level(correct, strata, aggregate=agg, min_per_category=min_facts),
                             domain=domain, metric=metric, **ids))
        for c in CATEGORIES if categories else ():
            sel = strata == c
            if sel.any():
                rows.append(_row(ci_level(correct[:, sel], None, aggregate="pooled"), domain=domain,
                                 metric=f"Acc-{c}", **ids))
    return rows


def difference_row(a_runs: Sequence[dict], b_runs: Sequence[dict], domain: str, metric: str, min_facts: int,
                   paired_seeds: bool, **ids) -> dict:
    """Acc(b) - Acc(a) on one domain, paired over facts (and over seeds when they are the same models)."""
    a, strata = domain_correctness(a_runs, domain)
    b, _ = domain_correctness(b_runs, domain)
    iv = ci_difference(a, b, strata, paired_seeds=paired_seeds, aggregate=AGGREGATES[metric],
                       min_per_category=min_facts)
    return _row(iv, domain=domain, metric=metric, **ids)


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
            rows.append(_row(ci_mean_items(kl), metric="KL", **ids))
        name = f"test-{category}"
        if name in runs[0][1]["per_set"] and runs[0][1]["per_set"][name]["n"]:
            correct = set_correctness([r["per_set"] for _, r in runs], name)
            rows.append(_row(ci_level(correct, None, aggregate="pooled"), metric=f"Acc_test-{category}", **ids))
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
            rows.append(_row(iv, model=model, training=f"D_train-{cat}", scale=str(nxt), versus=str(prev),
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


# --------------------------------------------------------------------------------------------- §5
def restore_rows(sweeps: dict, min_facts: int, model: str, on_train: bool = False) -> pd.DataFrame:
    """Tables 4 and 6: for each fine-tuned configuration (category, scale, strategy) over its seeds and each
    restored k: the level and the gain over the same models unrestored (k = 0; paired seeds and facts).
    ``sweeps``: {(RunKey, strategy): stored sweep result}."""
    groups: dict[tuple, list] = defaultdict(list)
    for (key, strategy), res in sweeps.items():
        groups[(key.category, key.scale, strategy)].append((key.seed, res))
    rows = []
    for (cat, scale, strategy), runs in sorted(groups.items(), key=lambda g: (str(g[0][1]), g[0][0], g[0][2])):
        runs = sorted(runs, key=lambda x: x[0])
        by_k = defaultdict(list)
        for _, res in runs:
            for r in res["rows"]:
                by_k[r["k"]].append(r["per_set"])
        ids = {"model": model, "training": f"D_train-{cat}", "scale": str(scale), "strategy": strategy}
        for k, per_sets in by_k.items():
            if on_train:
                base, now = set_correctness(by_k[0], "train"), set_correctness(per_sets, "train")
                rows.append(_row(ci_level(now, None, aggregate="pooled"), k=k, domain="train", metric="Acc",
                                 kind="level", **ids))
                if k:
                    rows.append(_row(ci_difference(base, now, None, paired_seeds=True, aggregate="pooled"), k=k,
                                     domain="train", metric="Acc", kind="gain", **ids))
                continue
            for domain in DOMAINS:
                for metric in AGGREGATES:
                    correct, strata = domain_correctness(per_sets, domain)
                    if correct.shape[1] == 0:
                        continue
                    rows.append(_row(ci_level(correct, strata, aggregate=AGGREGATES[metric],
                                              min_per_category=min_facts),
                                     k=k, domain=domain, metric=metric, kind="level", **ids))
                    if k:
                        rows.append(difference_row(by_k[0], per_sets, domain, metric, min_facts, paired_seeds=True,
                                                   k=k, kind="gain", **ids))
    return pd.DataFrame(rows)


def layer_rows(layer_results: dict, unrestored: dict, min_facts: int, model: str, metric: str) -> pd.DataFrame:
    """Table 11: Acc_test after restoring each layer group, and its change from the unrestored model (paired over
    facts and seeds). ``layer_results``: {RunKey: stored layer sweep}; ``unrestored``: {RunKey: grid result}."""
    groups: dict[tuple, list] = defaultdict(list)
    for key, res in layer_results.items():
        groups[(key.category, key.scale)].append(key)
    rows = []
    for (cat, scale), keys in sorted(groups.items(), key=lambda g: (str(g[0][1]), g[0][0])):
        keys = sorted(keys, key=lambda k: k.seed)
        base = [unrestored[k]["per_set"] for k in keys]
        for i, layers in enumerate(r["layers"] for r in layer_results[keys[0]]["rows"]):
            now = [layer_results[k]["rows"][i]["per_set"] for k in keys]
            ids = {"model": model, "training": f"D_train-{cat}", "scale": str(scale), "layers": layers}
            correct, strata = domain_correctness(now, "test")
            rows.append(_row(ci_level(correct, strata, aggregate=AGGREGATES[metric], min_per_category=min_facts),
                             domain="test", metric=metric, kind="level", **ids))
            rows.append(difference_row(base, now, "test", metric, min_facts, paired_seeds=True, kind="gain", **ids))
    return pd.DataFrame(rows)


def strategy_rows(results: dict, sweeps: dict, no_sft: dict, min_facts: int, model: str, metric: str,
                  instruct: dict | None = None, instruct_note: str | None = None) -> pd.DataFrame:
    """Table 7 (App. C.3), each column defined as the paper does: the instruct model (where params name one); the
    pre-trained model without SFT; SFT (Mixed), the best over data volumes; SFT (Divided), the best category at
    the largest scale; LoRA (on mixed data), the best over data volumes; Parameter Restoration, the best restored
    model (k > 0, top strategy) of the divided runs at the largest scale whose checkpoints were kept. "Best" is
    by the estimate of ``metric`` on the test domain, as the paper reports the best (which favours whatever was
    tried most). Rows: the level of each column on both domains, and each column's difference from SFT (Divided)
    (paired over facts; over seeds too when the models are the same, i.e. restoration of the chosen divided
    configuration)."""
    groups = group_runs(results)
    agg = AGGREGATES[metric]

    def score(per_sets):
        correct, strata = domain_correctness(per_sets, "test")
        return float(ci_level(correct, strata, aggregate=agg, min_per_category=min_facts, n_boot=100).estimate)

    def best_of(kind, scales=None):
        cands = [(g, [r["per_set"] for _, r in v]) for g, v in groups.items()
                 if g[0] == kind and (scales is None or g[2] in scales)]
        return max(cands, key=lambda c: np.nan_to_num(score(c[1]), nan=-1), default=None)

    columns: dict[str, tuple[list[dict], str, tuple | None]] = {}
    if instruct is not None:
        columns[f"{model}-Instruct"] = ([instruct], "instruct model, no SFT", None)
    columns[f"{model} (no SFT)"] = ([no_sft], "pre-trained, no SFT", None)
    divided = [g for g in groups if g[0] == "divided"]
    top = scale_order(g[2] for g in divided)[-1] if divided else None
    for kind, name, scales in (("mixed", "SFT (Mixed)", None), ("divided", "SFT (Divided)", {top}),
                               ("lora", "LoRA", None)):
        found = best_of(kind, scales)
        if found is not None:
            g, per_sets = found
            label = f"n={g[2]}" if kind != "divided" else f"D_train-{g[1]}, n={g[2]}"
            columns[name] = (per_sets, label, g)
    kept_top = scale_order(k.scale for k, _ in sweeps)[-1] if sweeps else None   # the largest restored scale
    if sweeps:
        by_cat_k: dict[tuple, list] = defaultdict(list)
        for (key, strategy), res in sorted(sweeps.items(), key=lambda kv: kv[0][0].seed):
            if strategy == "top" and key.scale == kept_top:
                for r in res["rows"]:
                    if r["k"]:
                        by_cat_k[(key.category, r["k"])].append(r["per_set"])
        if by_cat_k:
            (cat, k), per_sets = max(by_cat_k.items(), key=lambda kv: np.nan_to_num(score(kv[1]), nan=-1))
            columns["Parameter Restoration"] = (per_sets, f"D_train-{cat}, n={kept_top}, restore {k:g}%",
                                                ("divided", cat, kept_top))
    rows = []
    if instruct is None:            # the paper's first column: n/a, and why
        note = instruct_note or "no instruct model named in params (models[].instruct_path)"
        rows += [{"model": model, "strategy": f"{model}-Instruct", "configuration": f"n/a: {note}",
                  "domain": d, "metric": metric, "kind": "level", "n_seeds": 0, "n_facts": 0,
                  "estimate": np.nan, "low": np.nan, "high": np.nan} for d in DOMAINS]
    for name, (per_sets, label, g) in columns.items():
        for domain in DOMAINS:
            correct, strata = domain_correctness(per_sets, domain)
            rows.append(_row(ci_level(correct, strata, aggregate=agg, min_per_category=min_facts), model=model,
                             strategy=name, configuration=label, domain=domain, metric=metric, kind="level"))
    if "SFT (Divided)" in columns:
        ref_sets, _, ref_g = columns["SFT (Divided)"]
        for name, (per_sets, label, g) in columns.items():
            if name == "SFT (Divided)":
                continue
            paired = g == ref_g and len(per_sets) == len(ref_sets)
            for domain in DOMAINS:
                rows.append(difference_row(ref_sets, per_sets, domain, metric, min_facts, paired_seeds=paired,
                                           model=model, strategy=name, configuration=label, kind="vs SFT (Divided)"))
    return pd.DataFrame(rows)


def task_rows(sweeps: dict, model: str) -> pd.DataFrame:
    """Table 5: per task and metric column, the score before SFT, after SFT (k = 0) and after restoring each k %
    (levels over the test examples and seeds), and each restored k's change from k = 0 (paired over examples and
    seeds). ``sweeps``: {(task, seed): ``param_analysis.task_sweep`` result}."""
    by_task: dict[str, list] = defaultdict(list)
    for (task, seed), res in sorted(sweeps.items(), key=lambda kv: kv[0]):
        by_task[task].append(res)
    rows = []
    for task, runs in by_task.items():
        ks = [r["k"] for r in runs[0]["rows"]]
        for col in runs[0]["rows"][0]["scores"]:
            vals = {k: np.array([[x for x in r["rows"][i]["scores"][col]] for r in runs], dtype=float)
                    for i, k in enumerate(ks)}
            for k in ks:
                rows.append(_row(ci_level(vals[k], None, aggregate="pooled"), model=model, task=task,
                                 metric=col, k=k, kind="level"))
                if k not in (0, "pre-SFT"):
                    rows.append(_row(ci_difference(vals[0], vals[k], None, paired_seeds=True, aggregate="pooled"),
                                     model=model, task=task, metric=col, k=k, kind="gain"))
            rows.append(_row(ci_difference(vals["pre-SFT"], vals[0], None, paired_seeds=True, aggregate="pooled"),
                             model=model, task=task, metric=col, k=0, kind="SFT vs pre-SFT"))
    return pd.DataFrame(rows)


def concentration_rows(stats: dict, model: str, which: str = "concentration") -> pd.DataFrame:
    """Table 3: the share of the total relative change held by the top x % of parameters, per training set and
    scale, mean over seeds with a t-interval (a property of each fine-tuned model: no test facts involved)."""
    from scipy import stats as sps

    groups: dict[tuple, list] = defaultdict(list)
    for key, s in stats.items():
        groups[(key.category, key.scale)].append(pd.DataFrame(s[which]))
    rows = []
    for (cat, scale), frames in sorted(groups.items(), key=lambda g: (str(g[0][1]), g[0][0])):
        shares = np.stack([f["share"].to_numpy(dtype=float) for f in frames])
        n = len(frames)
        half = (sps.t.ppf(0.975, n - 1) * shares.std(0, ddof=1) / np.sqrt(n)) if n > 1 else np.zeros(shares.shape[1])
        for j, x in enumerate(frames[0]["top_percent"]):
            m = float(shares[:, j].mean())
            rows.append({"model": model, "training": f"D_train-{cat}", "scale": str(scale), "top_percent": x,
                         "n_seeds": n, "estimate": m, "low": m - half[j], "high": m + half[j]})
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
        rows.append(_row(ci_level(after, None, aggregate="pooled"), model=model, what="mean R after injection",
                         exposure=int(count), R_before=float(before.mean()),
                         **{f"category {c}": int(cats[c]) for c in CATEGORIES}))
    rho = ci_spearman(planned["exposure"].to_numpy(dtype=float), planned["R"].to_numpy(dtype=float))
    rows.append(_row(rho, model=model, what="Spearman rho(exposure, R)"))
    for what, g in (("R change, exposure-0 facts", planned[planned["exposure"] == 0]),
                    ("R change, facts outside the plan", testbed[testbed["exposure"].isna()])):
        if len(g):
            iv = ci_difference(g["R_before"].to_numpy(dtype=float), g["R"].to_numpy(dtype=float), None,
                               paired_seeds=True, aggregate="pooled")
            rows.append(_row(iv, model=model, what=what, R_before=float(g["R_before"].mean())))
    return pd.DataFrame(rows)


def pick(frame: pd.DataFrame, **where) -> pd.DataFrame:
    """Rows of a tidy table matching every ``column=value`` (a small helper for notebooks and the report)."""
    mask = np.ones(len(frame), dtype=bool)
    for col, val in where.items():
        mask &= (frame[col] == val).to_numpy() if not isinstance(val, (list, tuple, set)) \
            else frame[col].isin(val).to_numpy()
    return frame[mask]


__all__ = ["domain_correctness", "set_correctness", "level_rows", "difference_row", "headline_metric", "grid_cells",
           "scale_differences", "category_differences", "kl_cells", "kl_scale_differences",
           "kl_accuracy_correlation", "restore_rows", "layer_rows", "strategy_rows", "concentration_rows", "pick",
           "group_runs", "testbed_rows", "task_rows"]
