"""§5.1 of the paper, where fine-tuning's updates sit (notebook 04): Table 3 (and the same without the
pre-trained zeros), Tables 9 and 10, App. E.1 as testable rows, Figures 7-8.

r = |s - p| / |p| per decoder-layer parameter (``sftnb.param_analysis`` computes the update statistics); the rows
here are shares of the total relative change, per fine-tuned configuration over its seeds (t-intervals: a
property of each fine-tuned model, no test facts involved).
"""
from __future__ import annotations

from collections import defaultdict

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..report import paper
from ..report.artifacts import Artifact, ModelOutput
from ..report.display import display, titled
from ..report.stats import UNIT, Interval, t_interval
from ..report.verdicts import (OUT_OF_RANGE, NO_DATA, Claim, Result, Tables, combine, family_lines, fmt, have,
                               holm_signs, mark, mean_of, n_of, outside, parts, scales_of, verdict_of)

CONCENTRATION = Artifact("concentration", "table03_concentration")
CONCENTRATION_NONZERO = Artifact("concentration_nonzero", "table03b_concentration_nonzero_base")
CONCENTRATION_FIGURE = Artifact("concentration_figure", "fig07_concentration")
PER_LAYER = Artifact("redundant_per_layer", "table09_redundant_per_layer")
PER_MODULE = Artifact("redundant_per_module", "table10_redundant_per_module")
PER_LAYER_FIGURE = Artifact("redundant_per_layer_figure", "fig08_redundant_per_layer")
REDUNDANCY = Artifact("redundancy", "table09_redundancy_claims")
ARTIFACTS = (CONCENTRATION, CONCENTRATION_NONZERO, CONCENTRATION_FIGURE, PER_LAYER, PER_MODULE, PER_LAYER_FIGURE,
             REDUNDANCY)


# --------------------------------------------------------------------------------------------- rows
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
                     **t_row(t_interval(gaps))})
        rows.append({**ids, "metric": "FFN share (%)", **t_row(t_interval(np.array(ffn) / 100, bounds=UNIT), 100)})
    return pd.DataFrame(rows)


def t_row(iv: Interval, scale: float = 1.0) -> dict:
    return {"n_seeds": iv.n_seeds, "estimate": iv.estimate * scale, "low": iv.low * scale, "high": iv.high * scale}


# --------------------------------------------------------------------------------------------- display
def concentration_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Table 3: share (%) of the total relative change held by the top x % of parameters, mean ± 95 % interval
    over seeds, per training set and scale."""
    if rows.empty:
        return pd.DataFrame()
    d = rows.assign(column=[f"top {x:g}%" for x in rows["top_percent"]])
    return display(d, ["scale", "training"], "column", order=[f"top {x:g}%" for x in rows["top_percent"].unique()])


def distribution_tables(stats: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tables 9 and 10: the share (%) of the most-changed updates per layer and per module type, mean over the
    fine-tuned models given (``stats``: {RunKey: update statistics})."""
    layers, modules = {}, {}
    for key, s in stats.items():
        name = f"D_train-{key.category}, n={key.scale}"
        pl, pm = pd.DataFrame(s["per_layer"]), pd.DataFrame(s["per_module"])
        layers.setdefault(name, []).append(dict(zip(pl["layer"], 100 * pl["share"])))
        modules.setdefault(name, []).append(dict(zip(pm["module"], 100 * pm["share"])))
    t9 = pd.DataFrame({n: pd.DataFrame(v).mean() for n, v in layers.items()}).T
    t10 = pd.DataFrame({n: pd.DataFrame(v).mean() for n, v in modules.items()}).T
    t9.index.name = t10.index.name = "fine-tuned on (mean over seeds)"
    return t9, t10


def fig_concentration(rows: pd.DataFrame, rows_nonzero: pd.DataFrame | None = None):
    """The concentration curve of each fine-tuned configuration (the paper's definition, solid, with its interval
    band) and, when given, the same without the pre-trained zeros (dashed)."""
    fig, ax = plt.subplots(figsize=(5.8, 3.9))
    groups = list(rows.groupby(["training", "scale"], sort=False))
    colours = sns.color_palette(n_colors=max(1, len(groups)))
    for colour, ((training, scale), g) in zip(colours, groups):
        ax.plot(g["top_percent"], 100 * g["estimate"], marker="o", color=colour, label=f"{training}, n={scale}")
        ax.fill_between(g["top_percent"], 100 * g["low"], 100 * g["high"], color=colour, alpha=0.2)
        if rows_nonzero is not None:
            nz = rows_nonzero[(rows_nonzero["training"] == training) & (rows_nonzero["scale"] == scale)]
            ax.plot(nz["top_percent"], 100 * nz["estimate"], linestyle="--", marker=".", color=colour)
    ax.plot([0, 100], [0, 100], color="grey", linestyle=":", label="uniform")
    ax.set_xlabel("top x % of parameters (by relative change)")
    ax.set_ylabel("share of total relative change (%)")
    ax.set_ylim(0, 102)
    ax.legend(fontsize=7, title="dashed: pre-trained zeros excluded", title_fontsize=7)
    fig.tight_layout()
    return fig


def fig_layer_distribution(t9: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(8, 3.4))
    long = t9.reset_index().melt(id_vars=t9.index.name, var_name="layer", value_name="share (%)")
    sns.lineplot(long, x="layer", y="share (%)", hue=t9.index.name, marker="o", ax=ax)
    ax.set_title("where the most-changed parameters sit")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------- notebook 04
def concentration_tables(stats: dict, out: ModelOutput) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 3 as the paper defines it and without the pre-trained zeros (both saved with their rows), and the
    figure of both curves; returns the two tables. ``stats``: {RunKey: update statistics}."""
    rows = concentration_rows(stats, out.name)
    rows_nz = concentration_rows(stats, out.name, "concentration_nonzero_base")
    shown = []
    for artifact, r in ((CONCENTRATION, rows), (CONCENTRATION_NONZERO, rows_nz)):
        shown.append(out.table(artifact, concentration_table(r), data=r,
                               caption=f"Share (%) of the total relative change. {out.identity}."))
    if len(rows):
        out.figure(CONCENTRATION_FIGURE, titled(fig_concentration(rows, rows_nz), out.name, f"{out.identity}."))
    return shown[0], shown[1]


def where_tables(stats: dict, out: ModelOutput) -> pd.DataFrame:
    """Tables 9 and 10 (saved) and Figure 8; returns Table 10 (the share per module type)."""
    t9, t10 = distribution_tables(stats)
    out.table(PER_LAYER, t9, caption=out.identity)
    out.table(PER_MODULE, t10, caption=out.identity)
    if len(t9):
        out.figure(PER_LAYER_FIGURE, titled(fig_layer_distribution(t9), out.name, f"{out.identity}."))
    return t10


def redundancy_table(stats: dict, out: ModelOutput) -> pd.DataFrame:
    """App. E.1 as testable rows: the first layers' share per layer minus the last layers', the FFN share."""
    return out.table(REDUNDANCY, redundancy_rows(stats, out.name), index=False,
                     caption=f"Where the redundant updates sit (App. E.1). {out.identity}.")


# --------------------------------------------------------------------------------------------- the claims
def has_zeros(t: Tables, model: str) -> bool:
    """Does the pre-trained model hold exact zeros? Then the shares with and without them differ."""
    a, b = t.of("concentration", model), t.of("concentration_nonzero", model)
    if a.empty or b.empty:
        return False
    m = a.merge(b, on=["training", "scale", "top_percent"], suffixes=("", "_nz"))
    return bool((m["estimate"] - m["estimate_nz"]).abs().max() > 1e-9)


def shares(t: Tables, model: str) -> tuple[pd.DataFrame, str]:
    if has_zeros(t, model):
        return t.of("concentration_nonzero", model), ("the pre-trained weights hold exact zeros (r = |s-p|/|p| is "
                                                      "infinite there): the rule takes the shares with them excluded")
    return t.of("concentration", model), "no exact zeros in the pre-trained weights"


def table3(t: Tables) -> list[Result]:
    """Per fine-tuned configuration at a scale >= 240 (the paper: 240 and 1,920), the share of the total relative
    change (r = |s-p|/|p|) held by the top 1 % of parameters against 70 %, Holm over the configurations; combined:
    shown when at least half are significantly above and none below, mirrored for opposite. On a model whose
    pre-trained weights hold exact zeros the shares are taken with those parameters excluded (r is infinite
    there), and the report says so."""
    out = []
    for model in t.models("concentration"):
        d, note = shares(t, model)
        d = d[d["top_percent"] == 1]
        inside = d[[n_of(s) >= 240 for s in d["scale"]]]
        if inside.empty:
            out.append(Result(model, OUT_OF_RANGE, [f"needs a fine-tuned model at a scale >= 240; this run has "
                                                   f"{have(set(d['scale']))}", note] + outside(
                d, lambda r: f"{r['training']}, n={r['scale']}: top-1 % share (%)", diff=False), "share"))
            continue
        rows = [r for _, r in inside.iterrows()]
        signs = holm_signs(rows, expected=1, thresholds=0.70)
        lines = family_lines(rows, signs, lambda r: f"{r['training']}, n={r['scale']}: top-1 % share (%)",
                             diff=False) + [note]
        out.append(Result(model, combine([verdict_of(s) for s in signs]), lines, "share"))
    return out


def appendix_e1(t: Tables) -> list[Result]:
    """App. E.1 (Tables 9-10), two parts (Holm over the two), each averaged over the fine-tuned configurations at
    the largest scale: the first layers (the paper's 0-2 of 32, scaled to this depth) hold more of the redundant
    updates per layer than the last layers (30-31 of 32), and the FFN modules hold most (> 50 %) of them. Shown
    when both hold significantly; opposite when one is significantly reversed and none holds."""
    out = []
    for model in t.models("redundancy"):
        d = t.of("redundancy", model)
        d = d[d["scale"] == scales_of(d["scale"])[-1]]
        gap = d[d["metric"].str.startswith("first")]
        ffn = d[d["metric"].str.startswith("FFN")]
        if gap.empty or ffn.empty:
            out.append(Result(model, NO_DATA, ["no redundancy rows"]))
            continue
        g, f = mean_of([r for _, r in gap.iterrows()]), mean_of([r for _, r in ffn.iterrows()])
        signs = holm_signs([g, f], expected=1, thresholds=[0.0, 50.0])
        lines = [f"{gap['metric'].iloc[0]}: {fmt(g, 1, 2)}{mark(signs[0])}",
                 f"FFN share (%): {fmt(f, 1, 1, diff=False)}{mark(signs[1])}"]
        out.append(Result(model, parts(signs), lines, "share"))
    return out


def paper_table3() -> str:
    t = paper.table3()
    return (f"Table 3, the top 1 % of parameters holds {t['1%'].min():.2f}-{t['1%'].max():.2f} % of the total "
            f"relative change ({len(t)} LLaMA-3-8B models).")


CLAIMS = [
    Claim("Table 3 (§5.1): updates concentrate in the top 1 %", "table3_concentration", "§5.1",
          "LLaMA-3-8B, n = 240 and 1,920, r = |s-p|/|p|", table3, (CONCENTRATION, CONCENTRATION_NONZERO),
          paper_table3),
    Claim("App. E.1 (Tables 9-10): redundancy in the first layers and the FFN", "appendix_e1", "App. E.1",
          "LLaMA-3-8B, 32 layers", appendix_e1, (REDUNDANCY,),
          lambda: f"'{paper.claim('appendix_e1_ffn')}' (Tables 9-10)"),
]

__all__ = ["ARTIFACTS", "CLAIMS", "CONCENTRATION", "CONCENTRATION_NONZERO", "concentration_rows", "redundancy_rows",
           "t_row", "concentration_table", "distribution_tables", "fig_concentration", "fig_layer_distribution",
           "concentration_tables", "where_tables", "redundancy_table", "has_zeros", "shares", "table3",
           "appendix_e1"]
