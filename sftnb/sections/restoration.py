"""§5.2 of the paper, restoring the most-changed parameters (notebook 05): Tables 4 and 6, Figure 9, and the
two findings of §5.2 (App. C.2 for Table 6).

For each fine-tuned configuration (category, scale, strategy) over its seeds, the top k % of parameters by relative
change are set back to their pre-trained values (``sftnb.restoration.restore``; ``sftnb.param_analysis`` runs the sweeps);
the rows are the accuracy after restoring and its gain over the same models unrestored (paired seeds and facts).
"""
from __future__ import annotations

import math
from collections import defaultdict

import pandas as pd

from ..report import paper
from ..report.artifacts import Artifact, ModelOutput
from ..report.display import domain_name, fmt_gain, fmt_level, has_values, left_out, panels, restored_label, titled
from ..report.evidence import (AGGREGATES, DOMAINS, difference_row, domain_correctness, headline_metric,
                               interval_row, set_correctness)
from ..report.stats import ci_difference, ci_level
from ..report.verdicts import (K_PAPER, LARGE, NO_DATA, OUT_OF_RANGE, PEAK, Claim, Result, Tables, combine,
                               difference_of, family_lines, fmt, have, headline, holm_signs, large, mark, mean_of,
                               outside, parts, verdict_of)
from .param_updates import CONCENTRATION, CONCENTRATION_NONZERO, shares

RESTORE = {d: Artifact(f"restore_{d}", f"table04_restore_{d}") for d in DOMAINS}
RESTORE_TEST = RESTORE["test"]
RESTORE_TRAIN = Artifact("restore_train", "table06_restore_train")
CURVE = Artifact("restore_curve", "fig09_accuracy_vs_restored")
ARTIFACTS = (*RESTORE.values(), RESTORE_TRAIN, CURVE)


# --------------------------------------------------------------------------------------------- rows
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


def restore_metric(rows: pd.DataFrame) -> str:
    """The aggregate the restoration tables show and Table 7 compares on (``evidence.headline_metric``)."""
    return headline_metric(rows[rows["kind"] == "level"])


# --------------------------------------------------------------------------------------------- display
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
        cells.append({"n_train": scale, "restored": restored_label(k), "k": k, "cell": text,
                      "training": training + ("" if strategy == "top" else f" ({strategy})")})
    t = pd.DataFrame(cells).sort_values(["n_train", "k"], key=lambda s: s.map(lambda v: float(v)
                                                                               if str(v) != "all" else math.inf))
    out = t.pivot_table(index=["n_train", "restored"], columns="training", values="cell", aggfunc="first", sort=False)
    out.columns.name = None
    return out


def fig_restore_curve(rows: pd.DataFrame, metric: str, min_facts: int = 0):
    """Accuracy against the share of parameters restored, per fine-tuned configuration, with 95 % intervals; a
    domain with no value of ``metric`` gets no panel. Returns (figure, caption note)."""
    per = {d: rows[(rows["domain"] == d) & (rows["metric"] == metric) & (rows["kind"] == "level")] for d in DOMAINS}
    drawn = [d for d in DOMAINS if has_values(per[d])]
    fig, axes = panels(len(drawn), sharex=True)
    for ax, domain in zip(axes, drawn):
        for (training, scale, strategy), g in per[domain].groupby(["training", "scale", "strategy"], sort=False):
            g = g.sort_values("k")
            y, lo, hi = (100 * g[c].to_numpy(dtype=float) for c in ("estimate", "low", "high"))
            ax.errorbar(g["k"], y, yerr=[y - lo, hi - y], marker="o", capsize=3,
                        label=f"{training}, n={scale}" + ("" if strategy == "top" else f" ({strategy})"))
        ax.set_xlabel("parameters restored (%)")
        ax.set_ylabel(f"{metric.replace('Acc', f'Acc_{domain}')} (%)")
        ax.set_title(domain_name(domain), fontsize=9)
    if drawn:
        axes[0].legend(fontsize=7)
    else:
        axes[0].text(0.5, 0.5, "no data", ha="center", va="center")
        axes[0].set_axis_off()
    return fig, left_out([d for d in DOMAINS if d not in drawn], metric, min_facts)


# --------------------------------------------------------------------------------------------- notebook 05
def restore_tables(sweeps: dict, out: ModelOutput) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """Table 4 (a: in-domain, b: out-of-domain; each saved with its rows) and Figure 9. ``sweeps``:
    {(RunKey, strategy): stored sweep}. Returns (the rows, which Table 7 compares on; the two tables)."""
    rows = restore_rows(sweeps, out.min_facts, out.name)
    metric = restore_metric(rows)
    shown = [out.table(RESTORE[d], restore_table(rows, d, metric), data=rows[rows["domain"] == d],
                       caption=f"{metric}_{d} (%) after restoring k %. {out.identity}.") for d in DOMAINS]
    fig, note = fig_restore_curve(rows, metric, out.min_facts)
    out.figure(CURVE, titled(fig, out.name, f"{out.identity}.{note}"))
    return rows, shown


def train_table(sweeps: dict, out: ModelOutput) -> pd.DataFrame:
    """Table 6: accuracy on each model's own training set after restoring k % (sweeps with ``on_train=True``)."""
    rows = restore_rows(sweeps, 0, out.name, on_train=True)
    samples = sorted({(key.scale, *res["train_sample"]) for (key, _), res in sweeps.items() if "train_sample" in res},
                     key=lambda x: str(x[0]))
    note = "".join(f" At n = {scale}: a seeded sample of {n} of each model's {of} training facts (restore."
                   f"train_sample)." for scale, n, of in samples)
    return out.table(RESTORE_TRAIN, restore_table(rows, "train", "Acc"), data=rows,
                     caption=f"Training-set accuracy (%) after restoring k %.{note} {out.identity}.")


# --------------------------------------------------------------------------------------------- the claims
def _gains(t: Tables, name: str, model: str) -> pd.DataFrame:
    d = t.of(name, model)
    if d.empty:
        return d
    metric = headline(d[(d["kind"] == "level") & (d["domain"] == d["domain"].iloc[0])])
    return d[(d["kind"] == "gain") & (d["metric"] == metric) & (d["strategy"] == "top")].assign(
        k=lambda x: x["k"].astype(float))


def _restore_domain(g: pd.DataFrame, ks=(K_PAPER,)) -> tuple[str | None, str]:
    top = large(g["scale"]) if len(g) else None
    if top is None:
        return None, (f"needs restoration at a scale >= {LARGE} (the paper: 1,920); this run restored at "
                      f"{have(set(g['scale'])) if len(g) else 'none'}")
    present = set(g[g["scale"] == top]["k"])
    missing = [k for k in ks if k not in present]
    if missing:
        return None, f"needs k = {', '.join(f'{k:g}' for k in missing)} % at n={top}; this run has " \
                     f"{', '.join(f'{k:g}' for k in sorted(present))} %"
    return top, ""


def _outside_gains(g: pd.DataFrame) -> list[str]:
    return outside(g, lambda r: f"{r['training']}, n={r['scale']}, {r['k']:g} %: gain") if len(g) else []


def table4(t: Tables) -> list[Result]:
    """Primary family: at the largest scale (>= 960; the paper: 1,920) and k = 20 %, the gain in Acc_test of each
    training set's models from restoring the most-changed parameters (paired seeds and facts), Holm over the
    training sets; shown when at least half gain significantly and none loses, mirrored for opposite ("restoring
    20% of the parameters enhances the performance of all models"). Secondary: the other k of 1-20 % and the
    scale 240, where the paper's own D_train-4 loses 7.52 points at 20 %."""
    out = []
    for model in t.models("restore_test"):
        g = _gains(t, "restore_test", model)
        g = g[g["domain"] == "test"] if len(g) else g
        top, why = _restore_domain(g)
        if top is None:
            out.append(Result(model, OUT_OF_RANGE, [why] + _outside_gains(g)))
            continue
        prim = g[(g["scale"] == top) & (g["k"] == K_PAPER)]
        rows = [r for _, r in prim.iterrows()]
        signs = holm_signs(rows, expected=1)
        lines = family_lines(rows, signs, lambda r: f"{r['training']}, n={top}, 20 %")
        sec = g[~((g["scale"] == top) & (g["k"] == K_PAPER)) & (g["k"] <= 20)]
        lines += [f"secondary: {r['training']}, n={r['scale']}, {r['k']:g} %: {fmt(r)}" for _, r in sec.iterrows()]
        out.append(Result(model, combine([verdict_of(s) for s in signs]), lines, str(prim["metric"].iloc[0])))
    return out


def table6(t: Tables) -> list[Result]:
    """Primary: at the largest scale (>= 960) and k = 20 %, the gain in accuracy on each model's own training set,
    averaged over the training sets (one pre-specified comparison; the paper's D_train-0 loses at both scales,
    its average gains: "parameter reduction improves model performance on the training set"). Shown when the
    mean gain is significantly > 0, opposite when < 0. Secondary: each training set at 5 and 20 %."""
    out = []
    for model in t.models("restore_train"):
        g = _gains(t, "restore_train", model)
        top, why = _restore_domain(g)
        if top is None:
            out.append(Result(model, OUT_OF_RANGE, [why] + _outside_gains(g)))
            continue
        prim = [r for _, r in g[(g["scale"] == top) & (g["k"] == K_PAPER)].iterrows()]
        avg = mean_of(prim)
        s = holm_signs([avg], expected=1)[0]
        lines = [f"mean over {len(prim)} training sets, n={top}, 20 %: {fmt(avg)}{mark(s)}"]
        lines += [f"secondary: {r['training']}, n={r['scale']}, {r['k']:g} %: {fmt(r)}" for _, r in g.iterrows()]
        out.append(Result(model, verdict_of(s), lines, "Acc (training set)"))
    return out


def restoration_finding_1(t: Tables) -> list[Result]:
    """§5.2 Finding 1, two parts (Holm over the two), at the largest scale (>= 960) and k = 20 %: the top 20 % of
    parameters hold the majority (> 50 %) of the total relative change (the paper: "over 90%"), mean over the
    training sets; and restoring them raises Acc_test, mean over the training sets (the updates were
    unnecessary and degraded knowledge). Shown when both hold significantly; opposite when one is significantly
    reversed and none holds."""
    out = []
    for model in t.models("restore_test"):
        g = _gains(t, "restore_test", model)
        g = g[g["domain"] == "test"] if len(g) else g
        top, why = _restore_domain(g)
        table, note = shares(t, model)
        share_rows = [r for _, r in table[(table["top_percent"] == 20) & (table["scale"] == top)].iterrows()] \
            if top and len(table) else []
        if top is None or not share_rows:
            out.append(Result(model, OUT_OF_RANGE, [why or f"needs the top-20 % share at n={top}"]))
            continue
        share, gain = mean_of(share_rows), mean_of([r for _, r in g[(g["scale"] == top) & (g["k"] == K_PAPER)].iterrows()])
        signs = holm_signs([share, gain], expected=[1, 1], thresholds=[0.5, 0.0])
        lines = [f"share of the total relative change in the top 20 %, n={top} (mean over training sets): "
                 f"{fmt(share, diff=False)} %{mark(signs[0])}",
                 f"gain in Acc_test from restoring them (mean over training sets): {fmt(gain)}{mark(signs[1])}", note]
        out.append(Result(model, parts(signs), lines, "Acc"))
    return out


def restoration_finding_2(t: Tables) -> list[Result]:
    """§5.2 Finding 2, two parts (Holm over the two), from the gains at k = 20 %: larger data is more affected --
    gain at the largest scale (>= 960) minus gain at 240, mean over the training sets, > 0 -- and lower mastery
    is more affected -- gain of D_train-0 minus gain of D_train-4 at the largest scale > 0. Shown when both hold
    significantly; opposite when one is significantly reversed and none holds."""
    out = []
    for model in t.models("restore_test"):
        g = _gains(t, "restore_test", model)
        g = g[g["domain"] == "test"] if len(g) else g
        top, why = _restore_domain(g)
        at = g[g["k"] == K_PAPER] if len(g) else g
        small = at[at["scale"] == PEAK] if len(at) else at
        if top is None or small.empty:
            out.append(Result(model, OUT_OF_RANGE, [why or "needs restoration at k = 20 % at n=240 too"]))
            continue
        big = at[at["scale"] == top].set_index("training")
        small = small.set_index("training")
        common = [c for c in big.index if c in small.index]
        scale_part = mean_of([difference_of(big.loc[c], small.loc[c]) for c in common])
        if not {"D_train-0", "D_train-4"} <= set(big.index):
            out.append(Result(model, NO_DATA, ["needs D_train-0 and D_train-4 at the largest scale"]))
            continue
        mastery_part = difference_of(big.loc["D_train-0"], big.loc["D_train-4"])
        signs = holm_signs([scale_part, mastery_part], expected=1)
        lines = [f"gain(n={top}) - gain(n=240) at 20 %, mean over {len(common)} training sets: "
                 f"{fmt(scale_part)}{mark(signs[0])}",
                 f"gain(D_train-0) - gain(D_train-4) at n={top}, 20 %: {fmt(mastery_part)}{mark(signs[1])}"]
        out.append(Result(model, parts(signs), lines, "Acc"))
    return out


def paper_gains(table, ks=("20%",)) -> str:
    parts_ = []
    for n in (240, 1920):
        block = table.loc[n]
        parts_.append(f"n = {n}: " + ", ".join(f"{c} {float(block.loc[k, c]) - float(block.loc['0', c]):+.2f}"
                                               for c in block.columns for k in ks))
    return "; ".join(parts_)


CLAIMS = [
    Claim("Table 4 (§5.2): restoring 20 % improves Acc_test", "table4_gains", "§5.2",
          "LLaMA-3-8B, n = 1,920 (>= 960), k = 20 % (1-20 % secondary)", table4, (RESTORE_TEST,),
          lambda: "Table 4 (a), gain from restoring 20 %: " + paper_gains(paper.table4("test")) + "."),
    Claim("§5.2 Finding 1: most updates are unnecessary", "section5_finding_1", "§5.2",
          "LLaMA-3-8B, n = 1,920 (>= 960), k = 20 %", restoration_finding_1,
          (RESTORE_TEST, CONCENTRATION, CONCENTRATION_NONZERO),
          lambda: "Table 4 (a) at n = 1920 (above); '" + paper.claim("table3_concentration") + "'"),
    Claim("§5.2 Finding 2: larger or lower-mastery data is more affected", "section5_finding_2", "§5.2",
          "LLaMA-3-8B, n = 240 vs 1,920 (>= 960), D_train-0 vs D_train-4, k = 20 %", restoration_finding_2,
          (RESTORE_TEST,), lambda: f"'{paper.claim('section5_finding_2_detail')}'"),
    Claim("Table 6 (App. C.2): restoration improves training accuracy", "table6_training", "App. C.2",
          "LLaMA-3-8B, n = 1,920 (>= 960), k = 20 % (5 % secondary)", table6, (RESTORE_TRAIN,),
          lambda: "Table 6, gain on the training set from restoring 20 %: " + paper_gains(paper.table6()) + "."),
]

__all__ = ["ARTIFACTS", "CLAIMS", "RESTORE_TEST", "RESTORE_TRAIN", "restore_rows", "restore_metric", "restore_table",
           "fig_restore_curve", "restore_tables", "train_table", "table4", "table6", "restoration_finding_1",
           "restoration_finding_2"]
