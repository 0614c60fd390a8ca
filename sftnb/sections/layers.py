"""Table 11 of the paper (App. E.2; notebook 06): restoring every parameter of one group of decoder layers at a
time, and which layers' updates matter.
"""
from __future__ import annotations

from collections import defaultdict

import pandas as pd
import seaborn as sns

from ..report import paper
from ..report.artifacts import Artifact, ModelOutput
from ..report.display import fmt_gain, fmt_level, titled
from ..report.evidence import AGGREGATES, difference_row, domain_correctness, headline_metric, interval_row
from ..report.stats import ci_level
from ..report.verdicts import (INCONCLUSIVE, NO_DATA, OPPOSITE, OUT_OF_RANGE, SHOWN, Claim, Result, Tables,
                               difference_of, fmt, mark, mean_of, holm_signs, scales_of, superlative)
from .sft_grid import grid_cells

LAYERS = Artifact("layers", "table11_layer_restore")
HEATMAP = Artifact("layers_heatmap", "fig10_layer_restore_heatmap")
ARTIFACTS = (LAYERS, HEATMAP)


# --------------------------------------------------------------------------------------------- rows
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


# --------------------------------------------------------------------------------------------- display
def layer_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Table 11: Acc_test (%) after restoring each group of layers (columns), per fine-tuned configuration (rows),
    with the change from the unrestored models."""
    level = rows[rows["kind"] == "level"].set_index(["training", "scale", "layers"])
    gain = rows[rows["kind"] == "gain"].set_index(["training", "scale", "layers"])
    cells = [{"training": f"{t}, n={s}", "layers": l, "cell": f"{fmt_level(r)} ({fmt_gain(gain.loc[(t, s, l)])})"}
             for (t, s, l), r in level.iterrows()]
    out = pd.DataFrame(cells).pivot_table(index="training", columns="layers", values="cell", aggfunc="first",
                                          sort=False)
    out.columns.name = "restored layers"
    return out


def fig_layer_heatmap(rows: pd.DataFrame):
    """Table 11 as a heatmap of the change in Acc_test (points) from restoring each layer group."""
    gain = rows[rows["kind"] == "gain"].assign(row=lambda d: d["training"] + ", n=" + d["scale"].astype(str))
    grid = gain.pivot_table(index="row", columns="layers", values="estimate", sort=False) * 100
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.2 * len(grid.columns) + 2.5, 0.5 * len(grid) + 1.6))
    sns.heatmap(grid, annot=True, fmt="+.1f", cmap="RdBu", center=0, ax=ax,
                cbar_kws={"label": "change in Acc_test (points)"})
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------- notebook 06
def layers_table(layer_results: dict, unrestored: dict, results: dict, out: ModelOutput) -> pd.DataFrame:
    """Table 11 (saved with its rows) and its heatmap. ``layer_results``: {RunKey: stored layer sweep};
    ``unrestored``: {RunKey: grid unit} of the same models; ``results``: the grid's units (the aggregate shown is
    the grid's headline one)."""
    metric = headline_metric(grid_cells(results, out.min_facts, out.name))
    rows = layer_rows(layer_results, unrestored, out.min_facts, out.name, metric)
    t = layer_table(rows) if len(rows) else rows
    out.table(LAYERS, t, data=rows, caption=f"Acc_test (%) after restoring each layer group. {out.identity}.")
    if len(rows):
        out.figure(HEATMAP, titled(fig_layer_heatmap(rows), out.name, f"{out.identity}."))
    return t


# --------------------------------------------------------------------------------------------- the claim
def table11(t: Tables) -> list[Result]:
    """Both halves of App. E.2, from Acc_test after restoring each layer group (lowest, middle groups, top), each
    contrast averaged over the training sets at the largest scale restored by layers, Holm over the three:
    (a) "the lower layers are most crucial": lowest - top < 0 and lowest - mean(middle) < 0; (b) "the middle
    layers have the least impact": mean(middle) - top > 0 and mean(middle) - lowest > 0. A half is shown when its
    two contrasts are significant as claimed, opposite when either is significantly reversed (another group is
    significantly more crucial, or less); the claim is shown (opposite) when both halves are, else
    inconclusive. Needs 3 layer groups."""
    out = []
    for model in t.models("layers"):
        d = t.of("layers", model)
        lv = d[(d["kind"] == "level") & (d["domain"] == "test")]
        if lv.empty:
            out.append(Result(model, NO_DATA, ["no layer-restoration rows"]))
            continue
        top_scale = scales_of(lv["scale"])[-1]
        lv = lv[lv["scale"] == top_scale]
        groups = sorted(dict.fromkeys(lv["layers"].astype(str)), key=lambda g: int(g.split("-")[0]))
        if len(groups) < 3:
            out.append(Result(model, OUT_OF_RANGE, ["needs at least 3 layer groups (lowest, middle, top)"]))
            continue
        a_top, a_mid, b_top = [], [], []
        for training, g in lv.groupby("training", sort=False):
            by = {str(r["layers"]): r for _, r in g.iterrows()}
            low, high = by[groups[0]], by[groups[-1]]
            middle = mean_of([by[x] for x in groups[1:-1]])
            a_top.append(difference_of(low, high))
            a_mid.append(difference_of(low, middle))
            b_top.append(difference_of(middle, high))
        contrasts = [mean_of(a_top), mean_of(a_mid), mean_of(b_top)]
        s_lt, s_lm, s_mt = holm_signs(contrasts, expected=[-1, -1, 1])
        half_a, half_b = superlative([s_lt, s_lm]), superlative([s_mt, s_lm])
        v = SHOWN if half_a == half_b == SHOWN else OPPOSITE if half_a == half_b == OPPOSITE else INCONCLUSIVE
        seeds = int(lv["n_seeds"].min())
        lines = [f"(a) lowest - top: {fmt(contrasts[0])}{mark(s_lt)}; lowest - middle: {fmt(contrasts[1])}"
                 f"{mark(s_lm)} → {half_a}; (b) middle - top: {fmt(contrasts[2])}{mark(s_mt)} → {half_b}",
                 f"n={top_scale}, groups {', '.join(groups)}, each contrast the mean over {len(a_top)} training sets"
                 + ("; one seed: intervals cover test-fact sampling only" if seeds == 1 else f"; {seeds} seeds")]
        out.append(Result(model, v, lines, str(lv["metric"].iloc[0])))
    return out


def paper_table11() -> str:
    t = paper.table11()
    return "Table 11, Acc after restoring each layer group: " + "; ".join(
        f"{i}: " + ", ".join(f"{c} {float(v):.2f}" for c, v in row.items()) for i, row in t.iterrows()) + "."


CLAIMS = [
    Claim("Table 11 (App. E.2): lower layers crucial, middle layers least", "table11_layers", "App. E.2",
          "LLaMA-3-8B, groups of 4 layers", table11, (LAYERS,), paper_table11),
]

__all__ = ["ARTIFACTS", "CLAIMS", "LAYERS", "layer_rows", "layer_table", "fig_layer_heatmap", "layers_table",
           "table11"]
