"""Table 7 of the paper (App. C.3; notebook 05): restoration against the other ways of fine-tuning, each column
as the paper defines it (the instruct model, no SFT, SFT on mixed or divided data, LoRA, Parameter Restoration).
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd

from ..data.scales import scale_order
from ..report import paper
from ..report.artifacts import Artifact, ModelOutput
from ..report.display import display, fmt_gain
from ..report.evidence import AGGREGATES, DOMAINS, difference_row, domain_correctness, group_runs, interval_row
from ..report.stats import ci_level
from ..report.verdicts import (LARGE, NO_DATA, OUT_OF_RANGE, Claim, Result, Tables, fmt, have, holm_signs, large, mark,
                               verdict_of)
from .restoration import restore_metric
from .sft_grid import ACCURACY

STRATEGIES = Artifact("strategies", "table07_strategies")
ARTIFACTS = (STRATEGIES,)


# --------------------------------------------------------------------------------------------- rows
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


# --------------------------------------------------------------------------------------------- display
def strategies_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Table 7: each strategy's best configuration, its Acc_test and Acc_testood (headline aggregate) with 95 %
    intervals, and what it is (``strategy_rows``)."""
    if rows.empty:
        return pd.DataFrame()
    level = rows[rows["kind"] == "level"]
    t = display(level, "domain", "strategy", order=list(dict.fromkeys(level["strategy"])))
    t.index = [f"Acc_{d}" for d in t.index]
    t.loc["configuration"] = [level[level["strategy"] == s]["configuration"].iloc[0] for s in t.columns]
    return t


# --------------------------------------------------------------------------------------------- notebook 05
def strategies_tables(results: dict, sweeps: dict, no_sft: dict, instruct: dict | None, instruct_note: str | None,
                      restored: pd.DataFrame, out: ModelOutput) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 7 (saved with its rows) and each column minus SFT (Divided). ``results``: the grid's units;
    ``sweeps``: the restoration sweeps; ``no_sft`` / ``instruct``: the reference evaluations' ``per_set``;
    ``restored``: Table 4's rows (``restoration.restore_tables``), whose aggregate this table compares on."""
    metric = restore_metric(restored)
    rows = strategy_rows(results, sweeps, no_sft, out.min_facts, out.name, metric, instruct, instruct_note)
    t = out.table(STRATEGIES, strategies_table(rows), data=rows,
                  caption=f"{metric} (%) of each strategy. {out.identity}.")
    return t, display(rows[rows["kind"] == "vs SFT (Divided)"], "domain", "strategy", fmt_gain)


# --------------------------------------------------------------------------------------------- the claim
def table7(t: Tables) -> list[Result]:
    """Primary: Parameter Restoration minus SFT (Divided) on Acc_test, both as the paper defines them (the best
    configuration at the largest scale, >= 960: best-of choices, as printed in Table 7); shown when significantly
    > 0 (Table 7's best column), opposite when < 0. Secondary: the other columns against SFT (Divided)."""
    out = []
    for model in t.models("strategies"):
        d = t.of("strategies", model)
        scales = set(t.of("accuracy", model)["scale"]) if len(t.of("accuracy", model)) else set()
        if large(scales) is None and "paper" not in model:
            out.append(Result(model, OUT_OF_RANGE, [f"needs a scale >= {LARGE} (the paper: 1,920); this run has "
                                                   f"{have(scales)}"]))
            continue
        vs = d[(d["kind"] == "vs SFT (Divided)") & (d["domain"] == "test")]
        prim = vs[vs["strategy"] == "Parameter Restoration"]
        if prim.empty:
            out.append(Result(model, NO_DATA, ["no Parameter Restoration column"]))
            continue
        s = holm_signs([prim.iloc[0]], expected=1)[0]
        lines = [f"Parameter Restoration ({prim.iloc[0]['configuration']}) - SFT (Divided): {fmt(prim.iloc[0])}"
                 f"{mark(s)}"]
        lines += [f"secondary: {r['strategy']} ({r['configuration']}) - SFT (Divided): {fmt(r)}"
                  for _, r in vs[vs["strategy"] != "Parameter Restoration"].iterrows()]
        out.append(Result(model, verdict_of(s), lines, str(prim.iloc[0]["metric"])))
    return out


def paper_table7() -> str:
    t = paper.table7()
    return "Table 7, Acc_test: " + ", ".join(f"{c} {float(v):.2f}" for c, v in t.loc["Acc_test"].items()) + "."


CLAIMS = [
    Claim("Table 7 (App. C.3): restoration is the best strategy", "table7_strategies", "App. C.3",
          "LLaMA-3-8B, best configurations at n = 1,920 (>= 960)", table7, (STRATEGIES, ACCURACY), paper_table7),
]

__all__ = ["ARTIFACTS", "CLAIMS", "STRATEGIES", "strategy_rows", "strategies_table", "strategies_tables", "table7"]
