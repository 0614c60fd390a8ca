"""§4 of the paper, the token level (notebook 03): Figures 3-5 and Findings 1 and 2 of §4.2.

On D_test-4 (facts the pre-trained model knows) the first-token distributions of the fine-tuned and the
pre-trained model are compared (top-10 tokens, re-normalised, KL; ``sftnb.token_kl`` computes it). The rows here:
mean KL and Acc_test-4 per grid cell, the KL steps between scales, and Spearman's rho(KL, Acc_test-4), with their
95 % intervals.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from ..data.scales import scale_order
from ..report import paper
from ..report.artifacts import Artifact, ModelOutput
from ..report.display import display, errorbar_lines, fmt_gain, fmt_level, scale_labels, titled
from ..report.evidence import group_runs, interval_row, set_correctness
from ..report.stats import POSITIVE, Interval, ci_difference, ci_level, ci_mean_items
from ..report.stats_rank import ci_spearman, ci_spearman_within
from ..report.verdicts import (INCONCLUSIVE, NO_DATA, OPPOSITE, OUT_OF_RANGE, PEAK, SHOWN, Claim, Result, Tables,
                               combine, fmt, have, holm_signs, mark, outside, scales_of, verdict_of)

TOPK_EXAMPLE = Artifact("topk_example", "fig03_topk_renormalisation")
KL_LEVELS = Artifact("kl_levels", "fig05_kl_vs_scale", rows=lambda d: d[d["metric"] == "KL"])
KL_STEPS = Artifact("kl_steps", "fig05_kl_steps")
KL_U = Artifact("kl_u", "fig05_kl_u")
KL_CORRELATION = Artifact("kl_correlation", "table_token_kl_correlation")
KL_WITHIN = Artifact("kl_within", "table_token_kl_within_scale")


def known_accuracy(category: int) -> Artifact:
    """Figure 4: accuracy on D_test-``category`` (the paper's D_test-4) against scale."""
    return Artifact("known_accuracy", f"fig04_acc_test{category}_vs_scale")


ARTIFACTS = (TOPK_EXAMPLE, known_accuracy(4), KL_LEVELS, KL_STEPS, KL_U, KL_CORRELATION, KL_WITHIN)


# --------------------------------------------------------------------------------------------- rows
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
        scales = [str(s) for s in scale_order(s for _, c, s in groups if c == cat)]   # as strings, like pivot
        if pivot not in scales or scales[0] == pivot or scales[-1] == pivot:
            continue
        by = {str(s): np.array([r["kl"] for _, r in v], dtype=float) for (_, c, s), v in groups.items() if c == cat}
        for step, (a, b) in (("decrease", (scales[0], pivot)), ("increase", (pivot, scales[-1]))):
            iv = ci_difference(by[a], by[b], None, paired_seeds=False, aggregate="pooled")
            rows.append(interval_row(iv, model=model, training=f"D_train-{cat}", step=step, scale=b, versus=a, metric="KL"))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------- display
def fig_metric_vs_scale(kl_cells: pd.DataFrame, metric: str, label: str, title: str):
    """Figures 4 and 5: one metric (KL, Acc_test-4) against scale, one line per training category, 95 % intervals."""
    d = kl_cells[kl_cells["metric"] == metric]
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    if not d.empty:
        errorbar_lines(ax, d, "training", scale_labels(d["scale"]), scale=100 if metric.startswith("Acc") else 1)
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


def kl_display(kl_cells: pd.DataFrame) -> pd.DataFrame:
    """The values behind Figures 4 and 5: per training set and scale, mean KL and Acc_test-4 with intervals."""
    d = kl_cells.assign(cell=[fmt_level(r, scale=1, digits=4) if r["metric"] == "KL" else fmt_level(r)
                              for _, r in kl_cells.iterrows()])
    out = d.pivot_table(index=["training", "scale"], columns="metric", values="cell", aggfunc="first", sort=False)
    out.columns.name = None
    return out


# --------------------------------------------------------------------------------------------- notebook 03
def example_figure(found, category: int, out: ModelOutput):
    """Figure 3 for one §4.1 example (``Experiment.kl_example``'s (table, example), or None: then says so)."""
    if found is None:
        print(f"{out.name}: no §4.1 example in D_test-{category}")
        return None
    table, ex = found
    fig = fig_topk_example(table, ex["prompt"], ex["answers"][0])
    return out.figure(TOPK_EXAMPLE, titled(fig, f"{out.name}: {ex['prompt']!r} (answer: {ex['answers'][0]})",
                                           f"{out.identity}."), data=table)


def kl_figures(results: dict, category: int, out: ModelOutput) -> pd.DataFrame:
    """Figures 4 and 5 (each saved with the CSV of its points) and the KL steps between scales (Finding 1);
    returns the values behind the figures."""
    cells = kl_cells(results, category, out.name)
    if cells.empty:
        print(f"{out.name}: no KL example")
        return cells
    for artifact, metric, label in ((known_accuracy(category), f"Acc_test-{category}", f"Acc_test-{category} (%)"),
                                    (KL_LEVELS, "KL", "KL (top-10, re-normalised)")):
        fig = fig_metric_vs_scale(cells, metric, label, "")
        out.figure(artifact, titled(fig, out.name, f"{out.identity}."), data=cells)
    steps = kl_scale_differences(results, out.name)
    out.table(KL_STEPS, display(steps, "training", "scale", lambda r: fmt_gain(r, scale=1, digits=4)), data=steps,
              caption=f"KL(scale) - KL(previous scale). {out.identity}.")
    return kl_display(cells)


def correlation_table(results: dict, category: int, out: ModelOutput) -> pd.DataFrame:
    """Finding 2 in numbers: Spearman's rho(KL, Acc_test-4) over the grid's divided runs."""
    rho = kl_accuracy_correlation(results, category, out.name)
    return out.table(KL_CORRELATION, rho, index=False,
                     caption=f"Spearman rho(KL, Acc_test-{category}). {out.identity}.")


def within_scale_tables(results: dict, category: int, out: ModelOutput) -> pd.DataFrame:
    """Finding 1 around n = 240 (saved) and Finding 2 within scale (saved and returned)."""
    u = kl_u_rows(results, out.name)
    out.table(KL_U, u, index=False, caption=f"KL steps around n = 240. {out.identity}.")
    within = kl_accuracy_within_scale(results, category, out.name)
    return out.table(KL_WITHIN, within, index=False,
                     caption=f"Spearman rho(KL, Acc_test-{category}) within scale. {out.identity}.")


# --------------------------------------------------------------------------------------------- the claims
def kl_finding_1(t: Tables) -> list[Result]:
    """Per training set, two pre-specified steps around the paper's minimum (240): KL(240) - KL(smallest) < 0
    ("initially decreases") and KL(largest) - KL(240) > 0 ("then increases"), Holm over all steps. A set is shown
    when both hold; opposite for an inverted U (a significant rise, then a significant fall) or a monotone curve
    over a range that includes 240 (both steps significant in one direction); sets combine as: shown when at
    least half are and none is opposite, mirrored for opposite. Domain: 240 and a scale on each side of it."""
    out = []
    for model in t.models("kl_levels"):
        scales = set(t.of("kl_levels", model)["scale"])
        u = t.of("kl_u", model)
        ordered = scales_of(scales)
        if PEAK not in scales or ordered[0] == PEAK or ordered[-1] == PEAK or u.empty:
            out.append(Result(model, OUT_OF_RANGE, [f"needs the scale 240 with a smaller and a larger one (the "
                                                   f"paper: 60, 240, ..., 1,920); this run has {have(scales)}"]
                              + outside(t.of("kl_steps", model), lambda r: f"{r['training']}: KL(n={r['scale']}) - "
                                        f"KL(n={r['versus']})", 1, 4), "KL"))
            continue
        rows = [r for _, r in u.iterrows()]
        expected = [-1 if r["step"] == "decrease" else 1 for r in rows]
        signs = holm_signs(rows, expected)
        per, lines = [], []
        for training in dict.fromkeys(u["training"]):
            idx = [i for i, r in enumerate(rows) if r["training"] == training]
            dec = next(signs[i] for i in idx if rows[i]["step"] == "decrease")
            inc = next(signs[i] for i in idx if rows[i]["step"] == "increase")
            # in "as claimed" terms dec = +1 is a fall and inc = +1 a rise; two significant steps that are not
            # fall-then-rise are an inverted U (rise, fall) or monotone through 240 (rise, rise / fall, fall)
            v = SHOWN if dec == inc == 1 else OPPOSITE if dec != 0 and inc != 0 else INCONCLUSIVE
            per.append(v)
            lines.append(f"{training}: " + ", ".join(f"KL(n={rows[i]['scale']}) - KL(n={rows[i]['versus']}): "
                                                     f"{fmt(rows[i], 1, 4)}{mark(signs[i])}" for i in idx) + f" → {v}")
        out.append(Result(model, combine(per), lines, "KL"))
    return out


def kl_finding_2(t: Tables) -> list[Result]:
    """Spearman's rho(KL, Acc_test-4) *within* scale, pooled over the scales >= 60 (the paper's range) with a
    bootstrap over cells, seeds nested in cells: shown when its interval lies below 0, opposite above. The rho
    pooled across scales is descriptive only (scale drives both KL and accuracy: it can reverse the sign)."""
    out = []
    for model in t.models("kl_within"):
        d = t.of("kl_within", model)
        prim = d[d["role"] == "primary"]
        if prim.empty or not np.isfinite(float(prim["estimate"].iloc[0])):
            out.append(Result(model, OUT_OF_RANGE if prim.empty or int(prim["n_runs"].iloc[0]) == 0 else NO_DATA,
                              ["needs at least 4 fine-tuned models at one scale >= 60"], str(d["metric"].iloc[0])))
            continue
        r = prim.iloc[0]
        s = holm_signs([r], expected=-1)[0]
        lines = [f"primary, within scale (n = {r['scales']}) over {int(r['n_runs'])} models: {fmt(r, 1, 2)}{mark(s)}"]
        lines += [f"{row['role']}: {row['what']} ({int(row['n_runs'])} models): {fmt(row, 1, 2)}"
                  for _, row in d[d["role"] != "primary"].iterrows()]
        out.append(Result(model, verdict_of(s), lines, str(r["metric"])))
    return out


CLAIMS = [
    Claim("Finding 1 (§4.2): KL first decreases, then increases", "section4_finding_1", "§4.2",
          "LLaMA-3-8B (Fig. 5), scales 60-1,920, minimum near 240", kl_finding_1, (KL_LEVELS, KL_U, KL_STEPS),
          lambda: f"'{paper.claim('finding1_kl_detail')}' (Figure 5; no numbers printed)"),
    Claim("Finding 2 (§4.2): larger KL, lower accuracy on known facts", "section4_finding_2", "§4.2",
          "LLaMA-3-8B (Figs. 4-5), Acc_test-4, scales 60-1,920; tested within scale", kl_finding_2, (KL_WITHIN,),
          lambda: f"'{paper.claim('finding2_kl_detail')}' (Figures 4 and 5; no coefficient printed)"),
]

__all__ = ["ARTIFACTS", "CLAIMS", "known_accuracy", "kl_cells", "kl_scale_differences", "kl_accuracy_correlation",
           "kl_accuracy_within_scale", "kl_u_rows", "fig_metric_vs_scale", "fig_topk_example", "kl_display",
           "example_figure", "kl_figures", "correlation_table", "within_scale_tables", "kl_finding_1",
           "kl_finding_2"]
