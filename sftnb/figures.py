"""The paper's tables and figures from stored results: pure functions of DataFrames and dicts that the notebooks get
from ``Experiment`` / ``sftnb.param_analysis``; nothing here computes or loads a model. Notebooks save what these
return through ``sftnb.reports``."""
from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from .config import scale_order
from .experiment import OOD_SETS, TEST_SETS, RunKey
from .reports import mean_std


def _scale_order(values) -> list[str]:
    return [str(v) for v in scale_order(values)]


def _divided(df: pd.DataFrame) -> pd.DataFrame:
    d = df[(df["kind"] == "divided") & (df["status"] == "done")].copy()
    d["training data"] = d["category"].map(lambda c: f"D_train-{int(c)}")
    return d


# ------------------------------------------------------------------------------------------ §3.4 (notebook 02)
def fig_accuracy_vs_scale(grid: pd.DataFrame, model_name: str):
    """Figure 2 / 6: Acc_test and Acc_testood (%) against the number of fine-tuning samples, one line per
    training category (mean, ± std band over seeds); SFT (Mixed) dashed."""
    d = _divided(grid)
    mixed = grid[(grid["kind"] == "mixed") & (grid["status"] == "done")].copy()
    order = _scale_order(grid["scale"])
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
    for ax, col, title in zip(axes, ("acc_test", "acc_testood"), ("Acc_test (in-domain)", "Acc_testood")):
        for frame, style in ((d, {}), (mixed.assign(**{"training data": "mixed"}), {"linestyle": "--"})):
            if frame.empty:
                continue
            frame = frame.assign(x=frame["scale"].map(order.index), y=100 * frame[col])
            sns.lineplot(frame, x="x", y="y", hue="training data", errorbar="sd", marker="o", ax=ax,
                         palette="viridis" if not style else ["grey"], **style)
        ax.set_xticks(range(len(order)), order)
        ax.set_xlabel("fine-tuning samples")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{model_name}: {title}")
    fig.tight_layout()
    return fig


def table_per_test_category(grid: pd.DataFrame, domain: str = "test") -> pd.DataFrame:
    """Table 2: at the largest scale with results, accuracy (%) on each test category for each training
    category, mean ± std over seeds."""
    d = _divided(grid)
    names = TEST_SETS if domain == "test" else OOD_SETS
    if d.empty:
        return pd.DataFrame()
    top = _scale_order(d["scale"])[-1]
    d = d[d["scale"] == top]
    rows = {}
    for cat, grp in d.groupby("training data"):
        rows[cat] = {n.replace(domain, f"Acc_{domain}"): mean_std(100 * grp[f"acc_{n}"]) for n in names
                     if f"acc_{n}" in grp}
        rows[cat][f"Acc_{domain}"] = mean_std(100 * grp[f"acc_{domain}"])
    t = pd.DataFrame(rows).T
    t.index.name = f"training data (n={top})"
    return t


# ------------------------------------------------------------------------------------------ §4 (notebook 03)
def fig_metric_vs_scale(grid: pd.DataFrame, column: str, label: str):
    """Figures 4 and 5: one metric against scale, one line per training category (± std over seeds)."""
    d = _divided(grid)
    order = _scale_order(grid["scale"])
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    if not d.empty and column in d:
        y = d[column] * (100 if column.startswith("acc") else 1)
        sns.lineplot(d.assign(x=d["scale"].map(order.index), y=y), x="x", y="y", hue="training data",
                     errorbar="sd", marker="o", palette="viridis", ax=ax)
    ax.set_xticks(range(len(order)), order)
    ax.set_xlabel("fine-tuning samples")
    ax.set_ylabel(label + (" (%)" if column.startswith("acc") else ""))
    fig.tight_layout()
    return fig


def kl_table(grid: pd.DataFrame, category: int = 4) -> tuple[pd.DataFrame, float]:
    """Per fine-tuned model: mean re-normalised KL and Acc_test-4 (%, category ``token_kl.category``); Spearman's
    rho between them over the grid (Finding 2: the further the distribution moves, the worse known facts do)."""
    from scipy.stats import spearmanr

    d = _divided(grid)
    acc = f"acc_test-{category}"
    if d.empty or acc not in d or "kl" not in d:
        return pd.DataFrame(columns=["training data", "scale", "seed", "kl", f"Acc_test-{category} (%)"]), math.nan
    t = d[["training data", "scale", "seed", "kl", acc]].reset_index(drop=True)
    ok = t.dropna(subset=["kl", acc])
    rho = float(spearmanr(ok["kl"], ok[acc]).statistic) if len(ok) > 2 else math.nan
    t[acc] = 100 * t[acc]
    return t.rename(columns={acc: f"Acc_test-{category} (%)"}), rho


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
def _run_name(key: RunKey) -> str:
    return f"D_train-{key.category}, n={key.scale}"


def concentration_table(stats: dict, which: str = "concentration") -> pd.DataFrame:
    """Table 3: share (%) of the total relative change held by the top x % of parameters, per fine-tuned model.
    ``which="concentration_nonzero_base"``: the same over the parameters whose pre-trained value is not 0."""
    rows = {}
    for key, s in stats.items():
        c = pd.DataFrame(s[which])
        rows[_run_name(key)] = {f"top {x:g}%": 100 * v for x, v in zip(c["top_percent"], c["share"])}
    t = pd.DataFrame(rows).T
    t.index.name = "fine-tuned on"
    return t


def distribution_tables(stats: dict) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tables 9 and 10: the share (%) of the restored (most-changed) updates per layer and per module type."""
    layers, modules = {}, {}
    for key, s in stats.items():
        pl, pm = pd.DataFrame(s["per_layer"]), pd.DataFrame(s["per_module"])
        layers[_run_name(key)] = dict(zip(pl["layer"], 100 * pl["share"]))
        modules[_run_name(key)] = dict(zip(pm["module"], 100 * pm["share"]))
    t9, t10 = pd.DataFrame(layers).T, pd.DataFrame(modules).T
    t9.index.name = t10.index.name = "fine-tuned on"
    return t9, t10


def fig_concentration(t3: pd.DataFrame, t3_nonzero: pd.DataFrame | None = None):
    """The concentration curve of each fine-tuned model (the paper's definition, solid) and, when given, the
    same without the pre-trained zeros (dashed, same colour)."""
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    xs = [float(c.split()[1].rstrip("%")) for c in t3.columns]
    colours = sns.color_palette(n_colors=max(1, len(t3)))
    for colour, (name, row) in zip(colours, t3.iterrows()):
        ax.plot(xs, row.values, marker="o", color=colour, label=name)
        if t3_nonzero is not None and name in t3_nonzero.index:
            ax.plot(xs, t3_nonzero.loc[name].values, marker=".", linestyle="--", color=colour,
                    label=f"{name}, pre-trained zeros excluded")
    ax.plot([0, 100], [0, 100], color="grey", linestyle=":", label="uniform")
    ax.set_xlabel("top x % of parameters (by relative change)")
    ax.set_ylabel("share of total relative change (%)")
    ax.set_ylim(0, 102)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def fig_layer_distribution(t9: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(8, 3.4))
    long = t9.reset_index().melt(id_vars=t9.index.name, var_name="layer", value_name="share (%)")
    sns.lineplot(long, x="layer", y="share (%)", hue=t9.index.name, marker="o", ax=ax)
    ax.set_title("where the most-changed parameters sit")
    fig.tight_layout()
    return fig


def _restored_label(k: float) -> str:
    return "0" if k == 0 else f"{k:g}%"


def _restore_pivot(rows: list[dict]) -> pd.DataFrame:
    """The paper's layout for Tables 4 and 6: one block of rows per number of training samples, one row per
    restored %, one column per training set."""
    if not rows:
        return pd.DataFrame()
    return pd.DataFrame(rows).pivot_table(index=["n_train", "restored"], columns="training data", values="acc",
                                          sort=False)


def restore_tables(sweeps: dict) -> dict[str, pd.DataFrame]:
    """Table 4 (a) in-domain and (b) out-of-domain: accuracy (%) after restoring k % of each fine-tuned model.
    A strategy other than "top" (the paper's) shows as its own column, e.g. "D_train-0 (random)"."""
    out = {}
    for domain in ("test", "testood"):
        rows = [{"n_train": key.scale, "restored": _restored_label(k), "acc": 100 * acc,
                 "training data": f"D_train-{key.category}" + ("" if strategy == "top" else f" ({strategy})")}
                for (key, strategy), df in sweeps.items() for k, acc in zip(df["k"], df[f"acc_{domain}"])]
        out[domain] = _restore_pivot(rows)
    return out


def fig_restore_curve(sweeps: dict):
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), sharex=True)
    for ax, domain in zip(axes, ("test", "testood")):
        for (key, strategy), df in sweeps.items():
            ax.plot(df["k"], 100 * df[f"acc_{domain}"], marker="o",
                    label=f"{_run_name(key)}{'' if strategy == 'top' else f' ({strategy})'}")
        ax.set_xlabel("parameters restored (%)")
        ax.set_ylabel(f"Acc_{domain} (%)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def train_restore_table(train_sweeps: dict) -> pd.DataFrame:
    """Table 6: accuracy (%) on each model's own training set after restoring k %."""
    return _restore_pivot([{"n_train": key.scale, "restored": _restored_label(k), "acc": 100 * acc,
                            "training data": f"D_train-{key.category}"}
                           for key, df in train_sweeps.items() for k, acc in zip(df["k"], df["train"])])


def strategies_table(grid: pd.DataFrame, sweeps: dict, no_sft: dict, model_name: str,
                     instruct: dict | None = None) -> pd.DataFrame:
    """Table 7: the best Acc_test (and its Acc_testood) of each strategy: the instruct model (its metrics, if
    params name one), the pre-trained model (``no_sft``), SFT on mixed data, SFT on divided data, LoRA, and
    divided SFT followed by parameter restoration (k > 0)."""
    cols = {}
    if instruct is not None:
        cols[f"{model_name}-Instruct"] = (instruct["acc_test"], instruct["acc_testood"])
    cols[f"{model_name} (no SFT)"] = (no_sft["acc_test"], no_sft["acc_testood"])
    done = grid[grid["status"] == "done"]
    for kind, name in (("mixed", "SFT (Mixed)"), ("divided", "SFT (Divided)"), ("lora", "LoRA")):
        d = done[done["kind"] == kind]
        if d.empty:
            continue
        by = d.fillna({"category": -1}).groupby(["category", "scale"])[["acc_test", "acc_testood"]].mean()
        best = by.reset_index().sort_values("acc_test", kind="stable").iloc[-1]   # mean over seeds, then best
        cols[name] = (best["acc_test"], best["acc_testood"])
    best_restore = None
    for (key, strategy), df in sweeps.items():
        restored = df[df["k"] > 0]            # k = 0 is SFT (Divided) itself, already its own column
        if strategy != "top" or restored.empty:
            continue
        row = restored.loc[restored["acc_test"].idxmax()]
        if best_restore is None or row["acc_test"] > best_restore[0]:
            best_restore = (row["acc_test"], row["acc_testood"])
    if best_restore:
        cols["Parameter Restoration"] = best_restore
    t = pd.DataFrame({k: {"Acc_test": 100 * v[0], "Acc_testood": 100 * v[1]} for k, v in cols.items()})
    t.index.name = "strategy"
    return t


def layer_table(layers: dict) -> pd.DataFrame:
    """Table 11: Acc_test (%) after restoring each group of layers (columns), per fine-tuned model (rows)."""
    rows = {f"D_train-{key.category}": dict(zip(df["layers"], 100 * df["acc_test"])) for key, df in layers.items()}
    t = pd.DataFrame(rows).T
    t.index.name = "fine-tuned on"
    t.columns.name = "restored layers"
    return t


def fig_layer_heatmap(t11: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(1.1 * len(t11.columns) + 2, 0.5 * len(t11) + 1.6))
    sns.heatmap(t11, annot=True, fmt=".1f", cmap="viridis", ax=ax, cbar_kws={"label": "Acc_test (%)"})
    fig.tight_layout()
    return fig
