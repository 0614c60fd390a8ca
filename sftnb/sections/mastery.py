"""§2-3.3 of the paper, knowledge mastery and the testbed (notebook 01): Tables 1 and 8, Figure 1, the fast
estimator against the sampling one, the testbed's exposure -> mastery table and the prompt-start study.

No claim of the paper is judged here: these tables describe the facts every later section trains and tests on.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import seaborn as sns

from ..data.facts import CATEGORIES
from ..report.artifacts import Artifact, ModelOutput, Output
from ..report.display import fmt_gain, fmt_level, titled
from ..report.evidence import interval_row
from ..report.stats import ci_difference, ci_level
from ..report.stats_rank import ci_spearman

MASTERY_COUNTS = Artifact("mastery_counts", "table01_mastery_counts", further="table08_mastery_counts")
DISTRIBUTION = Artifact("mastery_distribution", "fig01_mastery_distribution", per_model=False)
AGREEMENT = Artifact("probe_agreement", "table01_probe_agreement")
AGREEMENT_CONFUSION = Artifact("probe_agreement_confusion", "table01_probe_agreement_confusion")
AGREEMENT_CHECK = Artifact("probe_agreement_check", "table01_probe_agreement_check")
TESTBED = Artifact("testbed_exposure", "table_testbed_exposure")
TESTBED_FIGURE = Artifact("testbed_exposure_figure", "fig_testbed_exposure")
PROMPT_START = Artifact("prompt_start", "table01_prompt_start", per_model=False)
ARTIFACTS = (MASTERY_COUNTS, DISTRIBUTION, AGREEMENT, AGREEMENT_CONFUSION, AGREEMENT_CHECK, TESTBED, TESTBED_FIGURE,
             PROMPT_START)
CLAIMS: list = []


# --------------------------------------------------------------------------------------------- rows
def category_counts(probes: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Table 1 / Table 8: facts per mastery category (rows) for each named set (columns)."""
    table = pd.DataFrame({name: df["category"].value_counts().reindex(CATEGORIES, fill_value=0)
                          for name, df in probes.items()})
    table.index.name = "category"
    table.loc["total"] = table.sum()
    return table.astype(int)


def testbed_rows(testbed: pd.DataFrame, model: str) -> pd.DataFrame:
    """The testbed's ground truth (``ModelRun.testbed``): per exposure count, the mean R after injection with its
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




# --------------------------------------------------------------------------------------------- display
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


def fig_testbed_exposure(rows: pd.DataFrame):
    """Mean R against exposure count (95 % intervals; dashed: the same facts before injection), and the share of
    each mastery category at every count."""
    import matplotlib.pyplot as plt

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
    return fig


# --------------------------------------------------------------------------------------------- notebook 01
def counts_table(probes: dict, injected: bool, out: ModelOutput) -> pd.DataFrame:
    """Table 1 (Table 8 for a testbed model): facts per mastery category in each set. ``probes``: {split: probe
    frame} (``ModelRun.probes``)."""
    counts = category_counts({f"D_{s}": df for s, df in probes.items()})
    return dataclasses.replace(out, first=not injected).table(
        MASTERY_COUNTS, counts, caption=f"Facts per mastery category. {out.identity}.")


def distribution_figure(probes: list, out: Output):
    """Figure 1: the distribution of R, one panel per set and model. ``probes``: [(model config, {split: probe
    frame}), ...] (``ModelRun.probes`` of each model)."""
    frame = pd.concat([df.assign(set=f"D_{s}", model=mc.name) for mc, sets in probes for s, df in sets.items()])
    g = sns.displot(frame, x="R", col="set", row="model", bins=20, height=2.4, aspect=1.3,
                    facet_kws={"sharey": False})
    g.set_axis_labels("mastery R", "facts")
    caption = " ".join(f"{out.identity(mc)}." for mc, _ in probes)
    return out.whole_run().figure(DISTRIBUTION, titled(g.figure, "mastery R of every fact", caption))


def agreement_tables(agreement: dict | None, method: str, out: ModelOutput) -> tuple | None:
    """The fast estimator against the sampling one (``Experiment.probe_agreement``): the summary, the check and
    the confusion matrix, saved; None (and says so) when the run's probe has nothing to compare."""
    if agreement is None:
        print(f"{out.name}: probe.method is {method}: nothing to compare")
        return None
    check = pd.DataFrame([agreement["check"]]).assign(model=out.name)
    out.table(AGREEMENT, agreement["summary"],
              caption=f"Estimator vs sampling on {agreement['summary']['facts'].iloc[0]} facts. {out.identity}.")
    out.table(AGREEMENT_CONFUSION, agreement["confusion_estimator"])
    out.table(AGREEMENT_CHECK, check, index=False)
    return agreement["summary"], check, agreement["confusion_estimator"]


def testbed_tables(testbed: pd.DataFrame, out: ModelOutput) -> pd.DataFrame:
    """The testbed's exposure -> mastery table and figure (``ModelRun.testbed``); returns the table."""
    rows = testbed_rows(testbed, out.name)
    out.figure(TESTBED_FIGURE, titled(fig_testbed_exposure(rows), out.name, f"{out.identity}."))
    return out.table(TESTBED, testbed_table(rows), data=rows, caption=f"Exposure -> mastery. {out.identity}.",
                     index=False)


def prompt_start_table(starts: pd.DataFrame, out: ModelOutput) -> pd.DataFrame:
    """Mean R and categories of the study facts under each candidate prompt start (``prompt_start_study``)."""
    return out.table(PROMPT_START, starts, index=False,
                     caption=f"Prompt start vs mastery (study facts). {out.identity}.")


__all__ = ["ARTIFACTS", "CLAIMS", "testbed_rows", "testbed_table", "fig_testbed_exposure", "counts_table",
           "distribution_figure", "agreement_tables", "testbed_tables", "prompt_start_table"]
