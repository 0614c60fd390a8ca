"""Tables 3-7, 9-11 with their uncertainty (paper §5, App. C, E): tidy rows from the stored restoration sweeps,
update statistics and task sweeps, in the conventions of ``sftnb.evidence`` (which holds the grid's and §4's
rows and the shared helpers)."""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd

from .config import scale_order
from .evidence import (AGGREGATES, DOMAINS, difference_row, domain_correctness, group_runs, interval_row,
                       set_correctness)
from .stats import UNIT, Interval, ci_difference, ci_level, t_interval


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
                rows.append(interval_row(ci_level(now, None, aggregate="pooled"), k=k, domain="train", metric="Acc",
                                 kind="level", **ids))
                if k:
                    rows.append(interval_row(ci_difference(base, now, None, paired_seeds=True, aggregate="pooled"), k=k,
                                     domain="train", metric="Acc", kind="gain", **ids))
                continue
            for domain in DOMAINS:
                for metric in AGGREGATES:
                    correct, strata = domain_correctness(per_sets, domain)
                    if correct.shape[1] == 0:
                        continue
                    rows.append(interval_row(ci_level(correct, strata, aggregate=AGGREGATES[metric],
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
            rows.append(interval_row(ci_level(correct, strata, aggregate=AGGREGATES[metric], min_per_category=min_facts),
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
            rows.append(interval_row(ci_level(correct, strata, aggregate=agg, min_per_category=min_facts), model=model,
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
                rows.append(interval_row(ci_level(vals[k], None, aggregate="pooled"), model=model, task=task,
                                 metric=col, k=k, kind="level"))
                if k not in (0, "pre-SFT"):
                    rows.append(interval_row(ci_difference(vals[0], vals[k], None, paired_seeds=True, aggregate="pooled"),
                                     model=model, task=task, metric=col, k=k, kind="gain"))
            rows.append(interval_row(ci_difference(vals["pre-SFT"], vals[0], None, paired_seeds=True, aggregate="pooled"),
                             model=model, task=task, metric=col, k=0, kind="SFT vs pre-SFT"))
    return pd.DataFrame(rows)


def concentration_rows(stats: dict, model: str, which: str = "concentration") -> pd.DataFrame:
    """Table 3: the share of the total relative change held by the top x % of parameters, per training set and
    scale, mean over seeds with a t-interval (a property of each fine-tuned model: no test facts involved)."""
    groups: dict[tuple, list] = defaultdict(list)
    for key, s in stats.items():
        groups[(key.category, key.scale)].append(pd.DataFrame(s[which]))
    rows = []
    for (cat, scale), frames in sorted(groups.items(), key=lambda g: (str(g[0][1]), g[0][0])):
        shares = np.stack([f["share"].to_numpy(dtype=float) for f in frames])
        for j, x in enumerate(frames[0]["top_percent"]):
            iv = t_interval(shares[:, j], bounds=UNIT)
            rows.append({"model": model, "training": f"D_train-{cat}", "scale": str(scale), "top_percent": x,
                         "n_seeds": iv.n_seeds, "estimate": iv.estimate, "low": iv.low, "high": iv.high})
    return pd.DataFrame(rows)


def redundancy_rows(stats: dict, model: str) -> pd.DataFrame:
    """App. E.1 (Tables 9-10) as testable rows, per training set and scale over seeds (t-interval): the mean
    per-layer share (%) of the first layers minus that of the last layers -- the paper's 0-2 and 30-31 of 32
    layers, scaled to this model's depth -- and the share (%) held by the FFN (``mlp.*``) modules."""
    groups: dict[tuple, list] = defaultdict(list)
    for key, s in stats.items():
        groups[(key.category, key.scale)].append(s)
    rows = []
    for (cat, scale), runs in sorted(groups.items(), key=lambda g: (str(g[0][1]), g[0][0])):
        gaps, ffn = [], []
        for s in runs:
            share = pd.DataFrame(s["per_layer"]).sort_values("layer")["share"].to_numpy(dtype=float)
            first, last = int(np.ceil(3 * share.size / 32)), int(np.ceil(2 * share.size / 32))
            gaps.append(100 * (share[:first].mean() - share[-last:].mean()))
            pm = pd.DataFrame(s["per_module"])
            ffn.append(100 * pm.loc[pm["module"].astype(str).str.startswith("mlp"), "share"].sum())
        ids = {"model": model, "training": f"D_train-{cat}", "scale": str(scale)}
        rows.append({**ids, "metric": f"first {first} minus last {last} layers, share per layer (points)",
                     **_t_row(t_interval(gaps))})
        rows.append({**ids, "metric": "FFN share (%)", **_t_row(t_interval(np.array(ffn) / 100, bounds=UNIT), 100)})
    return pd.DataFrame(rows)


def _t_row(iv: Interval, scale: float = 1.0) -> dict:
    return {"n_seeds": iv.n_seeds, "estimate": iv.estimate * scale, "low": iv.low * scale, "high": iv.high * scale}


__all__ = ["restore_rows", "layer_rows", "strategy_rows", "task_rows", "concentration_rows", "redundancy_rows"]
