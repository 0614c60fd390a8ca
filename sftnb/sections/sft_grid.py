"""§3 of the paper, the SFT grid (notebook 02): Table 2, Figures 2 and 6, Phenomena 1 and 2 (§3.4).

Each model is fine-tuned on each mastery category (and on mixed data) at several scales and seeds; the rows here
are the accuracies of every grid cell, the differences between scales (Phenomenon 1) and between training
categories (Table 2, Phenomenon 2), with their 95 % intervals (``report.evidence``).
"""
from __future__ import annotations

import pandas as pd

from ..data.scales import scale_order
from ..report import paper
from ..report.artifacts import Artifact, ModelOutput
from ..report.display import (display, domain_name, errorbar_lines, fmt_gain, fmt_level, has_values, left_out, panels,
                              scale_labels, titled)
from ..report.evidence import DOMAINS, difference_row, group_runs, headline_metric, level_rows, training_label
from ..report.verdicts import (INCONCLUSIVE, LARGE, NO_DATA, OPPOSITE, OUT_OF_RANGE, PEAK, SHOWN, Claim, Result,
                               Tables, difference_of, family_lines, fmt, have, headline, holm_signs, large, mark,
                               outside, parts, scales_of)

ACCURACY = Artifact("accuracy", "fig02_accuracy_vs_scale", further="fig06_accuracy_vs_scale")
SCALE_DIFFERENCES = Artifact("scale_differences", "fig02_scale_differences", further="fig06_scale_differences")
PER_CATEGORY = {d: Artifact(f"per_category_{d}", f"table02_{d}") for d in DOMAINS}
CATEGORY_DIFFERENCES = Artifact("category_differences", "table02_differences")
CATEGORY_SPREAD = Artifact("category_spread", "table02_spread")
UNITS = Artifact("units", "table02_units", per_model=False)
ARTIFACTS = (ACCURACY, SCALE_DIFFERENCES, *PER_CATEGORY.values(), CATEGORY_DIFFERENCES, CATEGORY_SPREAD, UNITS)


# --------------------------------------------------------------------------------------------- rows
def grid_cells(results: dict, min_facts: int, model: str) -> pd.DataFrame:
    """Figure 2 / Table 2: every grid cell's accuracies (levels) over its seeds."""
    rows = []
    for (kind, cat, scale), runs in group_runs(results).items():
        rows += level_rows([r["per_set"] for _, r in runs], min_facts, model=model, kind=kind,
                           training=training_label(kind, cat), scale=str(scale))
    return pd.DataFrame(rows)


def scale_difference_rows(results: dict, min_facts: int, model: str, metric: str) -> pd.DataFrame:
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
                                       training=training_label(kind, cat), scale=str(s), versus=str(top)))
    return pd.DataFrame(rows)


def category_difference_rows(results: dict, min_facts: int, model: str, metric: str) -> pd.DataFrame:
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



def category_spread_rows(results: dict, min_facts: int, model: str, metric: str, low: int = 0,
                         high: int = 2) -> pd.DataFrame:
    """Phenomenon 2, the paper's pair at every scale: Acc(D_train-``high``) - Acc(D_train-``low``) (test domain;
    paired facts, independent seeds), so its value at the largest scale and its growth from the smallest can be
    tested."""
    groups = {g: v for g, v in group_runs(results).items() if g[0] == "divided"}
    rows = []
    for scale in scale_order({s for _, _, s in groups}):          # ints (and "all"), as the run keys hold them
        a = groups.get(("divided", low, scale))
        b = groups.get(("divided", high, scale))
        if a and b:
            rows.append(difference_row([r["per_set"] for _, r in a], [r["per_set"] for _, r in b], "test", metric,
                                       min_facts, paired_seeds=False, model=model, scale=str(scale),
                                       training=f"D_train-{high}", versus=f"D_train-{low}"))
    return pd.DataFrame(rows)




# --------------------------------------------------------------------------------------------- display
def fig_accuracy_vs_scale(cells: pd.DataFrame, metric: str, min_facts: int = 0):
    """Figure 2 / 6: Acc_test and Acc_testood (%) against the number of fine-tuning samples, one line per
    training category with its 95 % interval; SFT (Mixed) dashed. A domain with no value of ``metric`` (the
    paper's Acc is n/a where a category has fewer than ``min_facts`` facts) gets no panel: the caption says why.
    Returns (figure, caption note)."""
    order = scale_labels(cells["scale"])
    per = {d: cells[(cells["metric"] == metric) & (cells["domain"] == d) & cells["kind"].isin(["divided", "mixed"])]
           for d in DOMAINS}
    drawn = [d for d in DOMAINS if has_values(per[d])]
    fig, axes = panels(len(drawn), sharex=True)
    for ax, domain in zip(axes, drawn):
        errorbar_lines(ax, per[domain], "training", order, dashed=("mixed",))
        ax.set_ylabel(f"{metric.replace('Acc', f'Acc_{domain}')} (%)")
        ax.set_title(domain_name(domain), fontsize=9)
    if drawn:
        axes[0].legend(fontsize=7)
    note = left_out([d for d in DOMAINS if d not in drawn], metric, min_facts)
    if not drawn:
        axes[0].text(0.5, 0.5, "no data", ha="center", va="center")
        axes[0].set_axis_off()
    return fig, note


def table_per_test_category(cells: pd.DataFrame, domain: str, small: int) -> pd.DataFrame:
    """Table 2: at the largest scale each training category has, accuracy (%) on each test category and the
    aggregates, mean ± 95 % interval over seeds and test facts."""
    d = cells[(cells["kind"] == "divided") & (cells["domain"] == domain)]
    if d.empty:
        return pd.DataFrame()
    top = scale_labels(d["scale"])[-1]
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


# --------------------------------------------------------------------------------------------- notebook 02
def accuracy_figure(results: dict, out: ModelOutput) -> pd.DataFrame:
    """Figure 2 (Figure 6 for further models), saved with the CSV of every point; returns the grid's cells (the
    rows the other tables of this section start from)."""
    cells = grid_cells(results, out.min_facts, out.name)
    fig, note = fig_accuracy_vs_scale(cells, headline_metric(cells), out.min_facts)
    out.figure(ACCURACY, titled(fig, out.name, f"{out.identity}.{note}"), data=cells)
    return cells


def scale_differences_table(results: dict, cells: pd.DataFrame, out: ModelOutput) -> pd.DataFrame:
    """Phenomenon 1 in numbers: each training set's accuracy at its largest scale minus at every smaller scale."""
    metric = headline_metric(cells)
    diffs = scale_difference_rows(results, out.min_facts, out.name, metric)
    return out.table(SCALE_DIFFERENCES, table_differences(diffs, "test"), data=diffs,
                     caption=f"{metric}(largest scale) - {metric}(scale). {out.identity}.")


def per_category_table(cells: pd.DataFrame, domain: str, out: ModelOutput) -> pd.DataFrame:
    """Table 2 for one domain: accuracy on each test category at the largest scale."""
    rows = cells[(cells["domain"] == domain) & (cells["kind"] == "divided")]
    return out.table(PER_CATEGORY[domain], table_per_test_category(cells, domain, out.min_facts), data=rows,
                     caption=f"Accuracy (%) per test category, 95 % intervals. {out.identity}.")


def category_differences_table(results: dict, cells: pd.DataFrame, out: ModelOutput) -> pd.DataFrame:
    """Table 2's comparisons: every pair of training categories at the largest scale (row minus column)."""
    metric = headline_metric(cells)
    diffs = category_difference_rows(results, out.min_facts, out.name, metric)
    t = table_differences(diffs, "test") if len(diffs) else diffs
    return out.table(CATEGORY_DIFFERENCES, t, data=diffs,
                     caption=f"{metric}_test(row) - {metric}_test(column). {out.identity}.")


def spread_table(results: dict, cells: pd.DataFrame, out: ModelOutput) -> pd.DataFrame:
    """Phenomenon 2 at every scale: Acc(D_train-2) - Acc(D_train-0)."""
    spread = category_spread_rows(results, out.min_facts, out.name, headline_metric(cells))
    return out.table(CATEGORY_SPREAD, spread, index=False,
                     caption=f"Acc(D_train-2) - Acc(D_train-0) at each scale. {out.identity}.")


def units_table(units: pd.DataFrame, out: ModelOutput) -> pd.DataFrame:
    """Every unit of the grid as the store holds it (one row per fine-tuned model and seed), for the whole run."""
    return out.table(UNITS, units.drop(columns=["seconds"]), index=False)


# --------------------------------------------------------------------------------------------- the claims
def phenomenon_1(t: Tables) -> list[Result]:
    """Primary family, one comparison per training set: Acc_test at the largest scale (>= 960) minus Acc_test at
    240, the paper's peak (Holm over the training sets). Shown when none is significantly above 0 and at least
    one is significantly below ("optimal performance with just 240"; more data "risks degrading"); opposite
    when at least one is significantly above and none below (more data beyond 240 helps); else inconclusive.
    Domain: scales 240 and >= 960 (the paper: 240 vs 1,920)."""
    out = []
    for model in t.models("accuracy"):
        cells = t.of("accuracy", model)
        d = t.of("scale_differences", model)
        scales = set(cells["scale"])
        top = large(scales)
        if PEAK not in scales or top is None:
            out.append(Result(model, OUT_OF_RANGE, [f"needs the scales 240 and >= {LARGE}; this run has "
                                                   f"{have(scales)}"] + outside(
                d, lambda r: f"{r['training']}: Acc(n={r['versus']}) - Acc(n={r['scale']})")))
            continue
        metric = d["metric"].iloc[0] if len(d) else headline(cells)
        rows = [r for _, r in d[(d["scale"] == PEAK) & (d["versus"].astype(str) == top)].iterrows()] if len(d) else []
        if not rows:
            out.append(Result(model, NO_DATA, ["no Acc(largest) - Acc(240) rows"], metric))
            continue
        signs = holm_signs(rows, expected=-1)
        v = SHOWN if 1 in signs and -1 not in signs else OPPOSITE if -1 in signs and 1 not in signs else INCONCLUSIVE
        lines = family_lines(rows, signs, lambda r: f"{r['training']}: Acc(n={top}) - Acc(n=240)")
        rest = d[(d["scale"] != PEAK)]
        lines += [f"secondary: {r['training']}: Acc(n={r['versus']}) - Acc(n={r['scale']}): {fmt(r)}"
                  for _, r in rest.iterrows()]
        out.append(Result(model, v, lines, metric))
    return out


def phenomenon_2(t: Tables) -> list[Result]:
    """Two parts, both needed (Holm over the two): at the largest scale (>= 960) Acc_test(D_train-2) -
    Acc_test(D_train-0) > 0 (the paper's example: +12.06 at 1,920), and this spread grows from the smallest scale
    to the largest (its difference between the two scales > 0; the paper: 1.50 times the spread at 240). Shown
    when both are significantly > 0; opposite when one is significantly < 0 and none > 0. The other category
    pairs at the largest scale are secondary (Holm-marked over their family)."""
    out = []
    for model in t.models("accuracy"):
        spread = t.of("category_spread", model)
        scales = set(t.of("accuracy", model)["scale"])
        top = large(scales)
        if top is None:
            out.append(Result(model, OUT_OF_RANGE, [f"needs a scale >= {LARGE} (the paper: 1,920); this run has "
                                                   f"{have(scales)}"] + outside(
                spread, lambda r: f"n={r['scale']}: D_train-2 - D_train-0")))
            continue
        present = scales_of(spread["scale"]) if len(spread) else []
        if top not in present or len(present) < 2:
            out.append(Result(model, NO_DATA, ["needs D_train-0 and D_train-2 at the largest and a smaller scale"]))
            continue
        at = {s: r for s, (_, r) in zip(spread["scale"], spread.iterrows())}
        growth = difference_of(at[top], at[present[0]])
        signs = holm_signs([at[top], growth], expected=1)
        lines = [f"spread at n={top}: D_train-2 - D_train-0 = {fmt(at[top])}{mark(signs[0])}",
                 f"growth from n={present[0]} ({fmt(at[present[0]])}) to n={top}: {fmt(growth)}{mark(signs[1])}"]
        pairs = t.of("category_differences", model)
        pairs = pairs[pairs["domain"] == "test"] if len(pairs) else pairs
        if len(pairs):
            ps = holm_signs([r for _, r in pairs.iterrows()], expected=1)
            lines += [f"secondary (Holm over {len(pairs)} pairs): {r['training']} - {r['versus']}: {fmt(r)}{mark(s)}"
                      for (_, r), s in zip(pairs.iterrows(), ps)]
        out.append(Result(model, parts(signs), lines, str(spread["metric"].iloc[0])))
    return out




def paper_phenomenon_2() -> str:
    t = paper.table2("LLaMA-3-8B")
    a, b = float(t.loc["D_train-0", "Acc_test"]), float(t.loc["D_train-2", "Acc_test"])
    return (f"Table 2, LLaMA-3-8B, n = 1920: Acc_test {a:.2f} (D_train-0), {b:.2f} (D_train-2): {b - a:+.2f}; "
            f"'{paper.claim('phenomenon_2_detail')}'")


CLAIMS = [
    Claim("Phenomenon 1 (§3.4): a peak at 240, then a decline", "phenomenon_1", "§3.4",
          "LLaMA-3-8B/70B (Fig. 2), scales 60-1,920; tested: Acc_test at 240 vs the largest scale >= 960",
          phenomenon_1, (ACCURACY, SCALE_DIFFERENCES), lambda: f"'{paper.claim('phenomenon_1_detail')}'"),
    Claim("Phenomenon 2 (§3.4): the spread across training categories", "phenomenon_2", "§3.4",
          "LLaMA-3-8B, n = 1,920 vs 240 (§3.4, Table 2); tested: D_train-2 - D_train-0 at the largest scale >= 960 "
          "and its growth from the smallest", phenomenon_2, (ACCURACY, CATEGORY_SPREAD, CATEGORY_DIFFERENCES),
          paper_phenomenon_2),
]

__all__ = ["ARTIFACTS", "CLAIMS", "ACCURACY", "grid_cells", "scale_difference_rows", "category_difference_rows",
           "category_spread_rows", "fig_accuracy_vs_scale", "table_per_test_category", "table_differences",
           "accuracy_figure", "scale_differences_table", "per_category_table", "category_differences_table",
           "spread_table", "units_table", "phenomenon_1", "phenomenon_2"]
