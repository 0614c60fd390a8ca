"""The paper's tables and figures, drawn from tidy interval tables (``sftnb.evidence``) and stored statistics: pure
functions of DataFrames and dicts; nothing here computes or loads a model. Notebooks save what these return
through ``sftnb.reports``.

Display tables print a level as ``54.1 ± 2.3`` (95 % interval; ``[low, high]`` when asymmetric) and a difference
as ``+3.1 [+0.4, +5.8]*`` (``*``: the interval excludes 0), in percent; a cell computed on fewer than
``eval.min_category_facts`` facts shows its n. Figures draw the same intervals as error bars or bands.
"""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from .config import scale_order
from .stats import Interval


def _scales(values) -> list[str]:
    return [str(v) for v in scale_order(values)]


def _interval(row) -> Interval:
    return Interval(float(row["estimate"]), float(row["low"]), float(row["high"]), n_seeds=int(row["n_seeds"]),
                    n_items=int(row.get("n_facts", 0) or 0))


def fmt_level(row, scale: float = 100, small: int = 0, digits: int | None = None) -> str:
    """'54.1 ± 2.3' (percent: 1 decimal; a fraction such as R: 3); '(n=7)' appended when the row rests on fewer
    than ``small`` facts."""
    text = _interval(row).fmt(scale=scale, digits=digits if digits is not None else (1 if scale == 100 else 3))
    n = int(row.get("n_facts", 0) or 0)
    return f"{text} (n={n})" if small and n < small and text != "n/a" else text


def fmt_gain(row, scale: float = 100, digits: int | None = None) -> str:
    return _interval(row).fmt_diff(scale=scale, digits=digits if digits is not None else (1 if scale == 100 else 3))


def display(frame: pd.DataFrame, index, columns, fmt=fmt_level, order=None) -> pd.DataFrame:
    """A wide table of formatted intervals (one cell per row of ``frame``)."""
    if frame.empty:
        return pd.DataFrame()
    cells = frame.assign(_cell=[fmt(r) for _, r in frame.iterrows()])
    out = cells.pivot_table(index=index, columns=columns, values="_cell", aggfunc="first", sort=False).fillna("")
    if order is not None:
        out = out[[c for c in order if c in out.columns]]
    out.columns.name = None
    return out


def _errorbar_lines(ax, frame: pd.DataFrame, hue: str, order: list[str], scale: float = 100, dashed=()):
    """One line per ``hue`` value across the x ``order``, with the interval as error bars."""
    colours = dict(zip(sorted(frame[hue].unique(), key=str), sns.color_palette("viridis", frame[hue].nunique())))
    for name, grp in frame.groupby(hue, sort=True):
        grp = grp.assign(x=grp["scale"].map(order.index)).sort_values("x")
        y, lo, hi = (scale * grp[c].to_numpy(dtype=float) for c in ("estimate", "low", "high"))
        ax.errorbar(grp["x"], y, yerr=[y - lo, hi - y], marker="o", capsize=3, label=name,
                    color="grey" if name in dashed else colours[name], linestyle="--" if name in dashed else "-")
    ax.set_xticks(range(len(order)), order)
    ax.set_xlabel("fine-tuning samples")


# ------------------------------------------------------------------------------------------ §3.4 (notebook 02)
def fig_accuracy_vs_scale(cells: pd.DataFrame, metric: str, title: str):
    """Figure 2 / 6: Acc_test and Acc_testood (%) against the number of fine-tuning samples, one line per
    training category with its 95 % interval; SFT (Mixed) dashed."""
    order = _scales(cells["scale"])
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.8), sharex=True)
    for ax, domain in zip(axes, ("test", "testood")):
        d = cells[(cells["metric"] == metric) & (cells["domain"] == domain) & cells["kind"].isin(["divided", "mixed"])]
        if not d.empty:
            _errorbar_lines(ax, d, "training", order, dashed=("mixed",))
        ax.set_ylabel(f"{metric.replace('Acc', f'Acc_{domain}')} (%)")
        ax.set_title(f"{'in-domain' if domain == 'test' else 'out-of-domain'}")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def table_per_test_category(cells: pd.DataFrame, domain: str, small: int) -> pd.DataFrame:
    """Table 2: at the largest scale each training category has, accuracy (%) on each test category and the
    aggregates, mean ± 95 % interval over seeds and test facts."""
    d = cells[(cells["kind"] == "divided") & (cells["domain"] == domain)]
    if d.empty:
        return pd.DataFrame()
    top = _scales(d["scale"])[-1]
    d = d[d["scale"] == top]
    order = [f"Acc-{c}" for c in range(5)] + ["Acc", "Acc (pooled)"]
    t = display(d, "training", "metric", lambda r: fmt_level(r, small=small), order)
    t.columns = [c.replace("Acc", f"Acc_{domain}") for c in t.columns]
    t.index.name = f"training data (n={top})"
    return t


def table_differences(diffs: pd.DataFrame, domain: str = "test") -> pd.DataFrame:
    """Table 2's comparisons: the difference of the headline accuracy between training categories (row minus
    column), ``*`` where the interval excludes 0."""
    d = diffs[diffs["domain"] == domain] if "domain" in diffs else diffs
    return display(d, "training", "versus", fmt_gain)


# ------------------------------------------------------------------------------------------ the testbed (notebook 01)
def testbed_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per exposure count: facts, mean R after injection (95 % interval over facts), before, and the categories;
    then rho(exposure, R) and the interference rows."""
    per = rows[rows["what"] == "mean R after injection"]
    t = pd.DataFrame({"exposure": per["exposure"].astype(int), "facts": per["n_facts"],
                      "mean R after": [fmt_level(r, scale=1) for _, r in per.iterrows()],
                      "mean R before": per["R_before"].map(lambda x: f"{x:.3f}")})
    for c in range(5):
        t[f"category {c}"] = per[f"category {c}"].astype(int)
    extra = rows[rows["what"] != "mean R after injection"]
    notes = pd.DataFrame({"exposure": extra["what"],
                          "mean R after": [fmt_gain(r, scale=1) if "change" in r["what"] else fmt_level(r, scale=1)
                                           for _, r in extra.iterrows()],
                          "facts": extra["n_facts"]})
    return pd.concat([t, notes], ignore_index=True).fillna("")


def fig_testbed_exposure(rows: pd.DataFrame, title: str):
    """Mean R against exposure count (95 % intervals; dashed: the same facts before injection), and the share of
    each mastery category at every count."""
    per = rows[rows["what"] == "mean R after injection"].sort_values("exposure")
    x = range(len(per))
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.8))
    y, lo, hi = (per[c].to_numpy(dtype=float) for c in ("estimate", "low", "high"))
    axes[0].errorbar(x, y, yerr=[y - lo, hi - y], marker="o", capsize=3, label="after injection")
    axes[0].plot(x, per["R_before"], linestyle="--", marker=".", color="grey", label="before (base model)")
    axes[0].set_xticks(list(x), per["exposure"].astype(int))
    axes[0].set_xlabel("statements seen per fact (exposure)")
    axes[0].set_ylabel("mastery R")
    axes[0].set_ylim(0, 1)
    axes[0].legend(fontsize=7)
    shares = per[[f"category {c}" for c in range(5)]].to_numpy(dtype=float)
    shares = shares / shares.sum(1, keepdims=True)
    bottom = 0
    for c, colour in zip(range(5), sns.color_palette("viridis", 5)):
        axes[1].bar(list(x), shares[:, c], bottom=bottom, color=colour, label=f"category {c}")
        bottom = bottom + shares[:, c]
    axes[1].set_xticks(list(x), per["exposure"].astype(int))
    axes[1].set_xlabel("statements seen per fact (exposure)")
    axes[1].set_ylabel("share of facts")
    axes[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ §4 (notebook 03)
def fig_metric_vs_scale(kl_cells: pd.DataFrame, metric: str, label: str, title: str):
    """Figures 4 and 5: one metric (KL, Acc_test-4) against scale, one line per training category, 95 % intervals."""
    d = kl_cells[kl_cells["metric"] == metric]
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    if not d.empty:
        _errorbar_lines(ax, d, "training", _scales(d["scale"]), scale=100 if metric.startswith("Acc") else 1)
        ax.legend(fontsize=7)
    ax.set_ylabel(label)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return fig


def fig_topk_example(table: pd.DataFrame, prompt: str, answer: str):
    """Figure 3 from real data (``Experiment.kl_example``): the fine-tuned model's top-k tokens for one question,
    with both models' probabilities over the whole vocabulary and after re-normalisation over those k tokens."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4), sharey=False)
    for ax, (a, b), title in zip(axes, (("p_finetuned", "p_pretrained"), ("p_finetuned_renorm", "p_pretrained_renorm")),
                                 ("whole vocabulary", "re-normalised over the top-k")):
        long = table.melt(id_vars="token", value_vars=[a, b], var_name="model", value_name="p")
        long["model"] = long["model"].map({a: "fine-tuned", b: "pre-trained"})
        sns.barplot(long, x="token", y="p", hue="model", ax=ax)
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=60)
    fig.suptitle(f"{prompt!r} (answer: {answer})", fontsize=10)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ §5 (notebooks 04-06)
def _restored_label(k: float) -> str:
    return "0" if k == 0 else f"{k:g}%"


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


def restore_table(rows: pd.DataFrame, domain: str, metric: str) -> pd.DataFrame:
    """Tables 4 and 6 in the paper's layout (a block per number of training samples, a row per restored %, a column
    per training set): the level, and under k > 0 the gain over the unrestored models with its interval."""
    d = rows[(rows["domain"] == domain) & (rows["metric"] == metric)]
    if d.empty:
        return pd.DataFrame()
    level = d[d["kind"] == "level"].set_index(["scale", "k", "training", "strategy"])
    gain = d[d["kind"] == "gain"].set_index(["scale", "k", "training", "strategy"])
    cells = []
    for idx, r in level.iterrows():
        text = fmt_level(r)
        if idx in gain.index:
            text += f" ({fmt_gain(gain.loc[idx])})"
        scale, k, training, strategy = idx
        cells.append({"n_train": scale, "restored": _restored_label(k), "k": k, "cell": text,
                      "training": training + ("" if strategy == "top" else f" ({strategy})")})
    t = pd.DataFrame(cells).sort_values(["n_train", "k"], key=lambda s: s.map(lambda v: float(v)
                                                                               if str(v) != "all" else math.inf))
    out = t.pivot_table(index=["n_train", "restored"], columns="training", values="cell", aggfunc="first", sort=False)
    out.columns.name = None
    return out


def fig_restore_curve(rows: pd.DataFrame, metric: str, title: str):
    """Accuracy against the share of parameters restored, per fine-tuned configuration, with 95 % intervals."""
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.8), sharex=True)
    for ax, domain in zip(axes, ("test", "testood")):
        d = rows[(rows["domain"] == domain) & (rows["metric"] == metric) & (rows["kind"] == "level")]
        for (training, scale, strategy), g in d.groupby(["training", "scale", "strategy"], sort=False):
            g = g.sort_values("k")
            y, lo, hi = (100 * g[c].to_numpy(dtype=float) for c in ("estimate", "low", "high"))
            ax.errorbar(g["k"], y, yerr=[y - lo, hi - y], marker="o", capsize=3,
                        label=f"{training}, n={scale}" + ("" if strategy == "top" else f" ({strategy})"))
        ax.set_xlabel("parameters restored (%)")
        ax.set_ylabel(f"{metric.replace('Acc', f'Acc_{domain}')} (%)")
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig


def strategies_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Table 7: each strategy's best configuration, its Acc_test and Acc_testood (headline aggregate) with 95 %
    intervals, and what it is (``evidence_restoration.strategy_rows``)."""
    if rows.empty:
        return pd.DataFrame()
    level = rows[rows["kind"] == "level"]
    t = display(level, "domain", "strategy", order=list(dict.fromkeys(level["strategy"])))
    t.index = [f"Acc_{d}" for d in t.index]
    t.loc["configuration"] = [level[level["strategy"] == s]["configuration"].iloc[0] for s in t.columns]
    return t


def task_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Table 5 in the paper's layout: a row per restored % (and the model before SFT), a column per task metric:
    the score (%), with the change from k = 0 in brackets."""
    level = rows[rows["kind"] == "level"].copy()
    gain = rows[rows["kind"] == "gain"].set_index(["task", "metric", "k"])
    cells = []
    for _, r in level.iterrows():
        text = fmt_level(r)
        if (r["task"], r["metric"], r["k"]) in gain.index:
            text += f" ({fmt_gain(gain.loc[(r['task'], r['metric'], r['k'])])})"
        restored = "pre-SFT" if r["k"] == "pre-SFT" else _restored_label(float(r["k"]))
        cells.append({"restored": restored, "column": f"{r['task']} {r['metric']}", "cell": text})
    out = pd.DataFrame(cells).pivot_table(index="restored", columns="column", values="cell", aggfunc="first",
                                          sort=False)
    out.columns.name = None
    return out


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
    fig, ax = plt.subplots(figsize=(1.2 * len(grid.columns) + 2.5, 0.5 * len(grid) + 1.6))
    sns.heatmap(grid, annot=True, fmt="+.1f", cmap="RdBu", center=0, ax=ax,
                cbar_kws={"label": "change in Acc_test (points)"})
    fig.tight_layout()
    return fig


def kl_display(kl_cells: pd.DataFrame) -> pd.DataFrame:
    """The values behind Figures 4 and 5: per training set and scale, mean KL and Acc_test-4 with intervals."""
    d = kl_cells.assign(cell=[fmt_level(r, scale=1, digits=4) if r["metric"] == "KL" else fmt_level(r)
                              for _, r in kl_cells.iterrows()])
    out = d.pivot_table(index=["training", "scale"], columns="metric", values="cell", aggfunc="first", sort=False)
    out.columns.name = None
    return out


__all__ = ["display", "fmt_level", "fmt_gain", "fig_accuracy_vs_scale", "table_per_test_category",
           "table_differences", "fig_metric_vs_scale", "fig_topk_example", "concentration_table",
           "distribution_tables", "fig_concentration", "fig_layer_distribution", "restore_table",
           "fig_restore_curve", "strategies_table", "task_table", "layer_table", "fig_layer_heatmap", "kl_display",
           "testbed_table",
           "fig_testbed_exposure"]
