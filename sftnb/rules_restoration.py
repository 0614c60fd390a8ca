"""Rules for the claims about parameters and their restoration (§5, App. C and E); see ``sftnb.rules``."""
from __future__ import annotations

import pandas as pd

from .verdicts import (INCONCLUSIVE, K_PAPER, LARGE, NO_DATA, OPPOSITE, OUT_OF_RANGE, PEAK, SHOWN, TASK_MARGIN,
                       Result, Tables, combine, difference_of, family_lines, fmt, have, headline, holm_signs, large,
                       mark, mean_of, n_of, outside, parts, scales_of, superlative,
                       verdict_of)


# --------------------------------------------------------------------------------------------- §5
def _zeros(t: Tables, model: str) -> bool:
    """Does the pre-trained model hold exact zeros? Then the shares with and without them differ."""
    a, b = t.of("concentration", model), t.of("concentration_nonzero", model)
    if a.empty or b.empty:
        return False
    m = a.merge(b, on=["training", "scale", "top_percent"], suffixes=("", "_nz"))
    return bool((m["estimate"] - m["estimate_nz"]).abs().max() > 1e-9)


def _shares(t: Tables, model: str) -> tuple[pd.DataFrame, str]:
    if _zeros(t, model):
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
        d, note = _shares(t, model)
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
        shares, note = _shares(t, model)
        share_rows = [r for _, r in shares[(shares["top_percent"] == 20) & (shares["scale"] == top)].iterrows()] \
            if top and len(shares) else []
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


def table5(t: Tables) -> list[Result]:
    """Restoring k <= 20 % keeps each task's score: every (task, metric, k in 1-20 %) change from the unrestored
    fine-tuned model lies above -2 points (a pre-specified non-inferiority margin), Holm over the family. Shown
    when every change is significantly above -2 points; opposite when one is significantly below and none above."""
    out = []
    for model in t.models("tasks"):
        d = t.of("tasks", model)
        g = d[(d["kind"] == "gain")].assign(k=lambda x: pd.to_numeric(x["k"], errors="coerce"))
        g = g[(g["k"] > 0) & (g["k"] <= 20)]
        if g.empty:
            out.append(Result(model, OUT_OF_RANGE, ["needs task scores after restoring k in 1-20 %"]))
            continue
        rows = [r for _, r in g.iterrows()]
        signs = holm_signs(rows, expected=1, thresholds=-TASK_MARGIN)
        v = SHOWN if all(s == 1 for s in signs) else OPPOSITE if -1 in signs and 1 not in signs else INCONCLUSIVE
        lines = [f"{signs.count(1)} of {len(rows)} changes (task, metric, k <= 20 %) significantly above -2 points, "
                 f"{signs.count(-1)} significantly below"]
        lines += family_lines(rows, signs, lambda r: f"{r['task']} {r['metric']}, {r['k']:g} %: change")
        out.append(Result(model, v, lines, "task score"))
    return out


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
