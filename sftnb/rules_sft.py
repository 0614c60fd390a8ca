"""Rules for the claims about fine-tuning data (§3.4) and the token level (§4.2); see ``sftnb.rules``."""
from __future__ import annotations

import numpy as np

from .verdicts import (INCONCLUSIVE, LARGE, NO_DATA, OPPOSITE, OUT_OF_RANGE, PEAK, SHOWN, Result, Tables, combine,
                       difference_of, family_lines, fmt, have, headline, holm_signs, large, mark, outside, parts,
                       scales_of, verdict_of)


# --------------------------------------------------------------------------------------------- §3.4
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


# --------------------------------------------------------------------------------------------- §4.2
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
