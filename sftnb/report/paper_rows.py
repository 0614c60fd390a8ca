"""The rules against the paper itself: tidy rows built from the paper's published numbers, and their reversal.

``sftnb report --paper`` applies every claim's rule (``sftnb.sections``) to these rows: a rule that encodes the paper's
statement faithfully must find it ``shown`` in the paper's own numbers, and ``opposite`` in the numbers reversed
(``reverse``). The rows have the schemas of a run's CSVs, for a model named ``PAPER_MODEL``.

What the paper prints, and what is assumed (``ASSUMPTIONS``, printed with the verdicts):

* Accuracies (Tables 2, 4, 6, 7, 11): the paper prints a spread only in Table 2 (n = 1,920), as subscripts, and
  says each experiment was repeated three times (§3.4; §3.3 says results are the mean and variance over five
  runs on five sampled training sets). Every accuracy of training set D_train-c takes Table 2's subscript for
  D_train-c (LLaMA-3-8B, Acc_test or Acc_testood) as its run-to-run standard deviation, with n = 3 runs: a
  Student t-interval for a level, Welch for a difference. Differences of the same models (restoration) are
  treated as independent, which errs wide. Table 7's Mixed, LoRA and Instruct columns take the median subscript.
* Accuracy against scale (Phenomena 1-2): Table 4 (a)'s unrestored rows (k = 0) are the only place the paper
  prints Acc_test for every training set at both 240 and 1,920; §3.4's own numbers (-8.86, 1.50 times) come from
  its Figure 2, which prints no values.
* Shares (Tables 3, 9, 10) and task scores (Table 5): no spread is printed; each number is taken as a point
  (an interval of zero width), so the rule checks the direction and the threshold the paper states.
* §4's findings are drawn in Figures 4-5 only: no numbers, so ``no data``.
"""
from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd
from scipy import stats as sps

from . import paper
from .verdicts import TASK_MARGIN, Tables

PAPER_MODEL = "LLaMA-3-8B (paper)"
N_RUNS = 3
ASSUMPTIONS = (f"accuracies: Table 2's subscript of each training set as its run-to-run SD, n = {N_RUNS} runs (§3.4), "
               "t-intervals (Welch for differences); shares and task scores: points (no spread printed); §4: "
               "figures only (no data)")
_CATS = paper.CATEGORIES


def _sd(domain: str = "test") -> dict[str, float]:
    t = paper.table2("LLaMA-3-8B", std=True)
    col = "Acc_test" if domain in ("test", "train") else "Acc_testood"
    return {c: float(t.loc[c, col]) for c in _CATS}


def _median_sd() -> float:
    return float(np.median(list(_sd().values())))


def _level(est: float, sd: float, **ids) -> dict:
    h = sps.t.ppf(0.975, N_RUNS - 1) * sd / np.sqrt(N_RUNS) if sd else 0.0
    return {**ids, "n_seeds": N_RUNS, "estimate": est / 100, "low": (est - h) / 100, "high": (est + h) / 100}


def _diff(b: float, sd_b: float, a: float, sd_a: float, **ids) -> dict:
    qa, qb = sd_a ** 2 / N_RUNS, sd_b ** 2 / N_RUNS
    if qa + qb > 0:
        df = (qa + qb) ** 2 / (qa ** 2 / (N_RUNS - 1) + qb ** 2 / (N_RUNS - 1))
        h = sps.t.ppf(0.975, df) * np.sqrt(qa + qb)
    else:
        h = 0.0
    d = b - a
    return {**ids, "n_seeds": N_RUNS, "estimate": d / 100, "low": (d - h) / 100, "high": (d + h) / 100}


def _point(est: float, **ids) -> dict:
    return {**ids, "n_seeds": 1, "estimate": est, "low": est, "high": est}


# --------------------------------------------------------------------------------------------- the tables
def _accuracy() -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Levels per (training, scale), Acc(1920) - Acc(240), D_train-2 - D_train-0 per scale (Table 4, k = 0)."""
    levels, steps, spread = [], [], []
    for domain in ("test", "testood"):
        t, sd = paper.table4(domain), _sd(domain)
        for c in _CATS:
            for n in (240, 1920):
                levels.append(_level(float(t.loc[(n, "0"), c]), sd[c], model=PAPER_MODEL, domain=domain,
                                     metric="Acc", kind="divided", training=c, scale=str(n)))
        if domain == "test":
            for c in _CATS:
                steps.append(_diff(float(t.loc[(1920, "0"), c]), sd[c], float(t.loc[(240, "0"), c]), sd[c],
                                   model=PAPER_MODEL, domain=domain, metric="Acc", kind="divided", training=c,
                                   scale="240", versus="1920"))
            for n in (240, 1920):
                a, b = float(t.loc[(n, "0"), "D_train-0"]), float(t.loc[(n, "0"), "D_train-2"])
                spread.append(_diff(b, sd["D_train-2"], a, sd["D_train-0"], model=PAPER_MODEL, domain=domain,
                                    metric="Acc", scale=str(n), training="D_train-2", versus="D_train-0"))
    return pd.DataFrame(levels), pd.DataFrame(steps), pd.DataFrame(spread)


def _category_pairs() -> pd.DataFrame:
    """Table 2 (n = 1,920): every pair of training sets, both domains, with the printed subscripts."""
    mean, std = paper.table2("LLaMA-3-8B"), paper.table2("LLaMA-3-8B", std=True)
    rows = []
    for a, b in combinations(_CATS, 2):
        for domain, col in (("test", "Acc_test"), ("testood", "Acc_testood")):
            rows.append(_diff(float(mean.loc[b, col]), float(std.loc[b, col]), float(mean.loc[a, col]),
                              float(std.loc[a, col]), model=PAPER_MODEL, domain=domain, metric="Acc",
                              scale="1920", training=b, versus=a))
    return pd.DataFrame(rows)


def _restore(table: pd.DataFrame, domain: str) -> pd.DataFrame:
    """Tables 4 and 6 as levels and gains over k = 0 for each training set and scale."""
    sd = _sd(domain)
    rows = []
    for (n, k), row in table.iterrows():
        for c in _CATS:
            ids = dict(model=PAPER_MODEL, domain=domain, metric="Acc", training=c, scale=str(n), strategy="top",
                       k=float(str(k).rstrip("%")))
            rows.append(_level(float(row[c]), sd[c], kind="level", **ids))
            if k != "0":
                rows.append(_diff(float(row[c]), sd[c], float(table.loc[(n, "0"), c]), sd[c], kind="gain", **ids))
    return pd.DataFrame(rows)


def _concentration() -> pd.DataFrame:
    t = paper.table3()
    return pd.DataFrame([_point(float(v) / 100, model=PAPER_MODEL, training=c, scale=str(n),
                                top_percent=float(p.rstrip("%")))
                         for (n, c), row in t.iterrows() for p, v in row.items()])


def _tasks() -> pd.DataFrame:
    t = paper.paper_results()["tables"]["table5"]
    columns = {(task, metric): [float(x) for x in values] for task in ("XSum", "GSM8K")
               for metric, values in t[task].items()}
    rows = []
    for i, k in enumerate(t["restore"]):
        kk = float(str(k).rstrip("%"))
        for (task, metric), values in columns.items():
            rows.append(_point(values[i] / 100, model=PAPER_MODEL, task=task, metric=metric, k=kk, kind="level"))
            if kk:
                rows.append(_point((values[i] - values[0]) / 100, model=PAPER_MODEL, task=task, metric=metric,
                                   k=kk, kind="gain"))
    return pd.DataFrame(rows)


def _strategies() -> pd.DataFrame:
    t, sd, med = paper.table7(), _sd(), _median_sd()
    # SFT (Divided) = D_train-2 at 1,920 unrestored and Parameter Restoration = D_train-2 at 1,920 after 20 %
    # (Table 4 (a) prints both values: 58.80, 62.21), so both take D_train-2's subscript.
    spread = {"SFT (Divided)": sd["D_train-2"], "Parameter Restoration": sd["D_train-2"]}
    rows = []
    for domain, line in (("test", "Acc_test"), ("testood", "Acc_testood")):
        ref = float(t.loc[line, "SFT (Divided)"])
        for name, v in t.loc[line].items():
            ids = dict(model=PAPER_MODEL, strategy=name, configuration="as printed in Table 7", domain=domain,
                       metric="Acc")
            rows.append(_level(float(v), spread.get(name, med), kind="level", **ids))
            if name != "SFT (Divided)":
                rows.append(_diff(float(v), spread.get(name, med), ref, spread["SFT (Divided)"],
                                  kind="vs SFT (Divided)", **ids))
    return pd.DataFrame(rows)


def _layers() -> pd.DataFrame:
    t, sd = paper.table11(), _sd()
    return pd.DataFrame([_level(float(v), sd[c], model=PAPER_MODEL, domain="test", metric="Acc", kind="level",
                                training=c, scale="unstated", layers=g)
                         for c, row in t.iterrows() for g, v in row.items()])


def _redundancy() -> pd.DataFrame:
    t = paper.paper_results()["tables"]
    layers = np.array([float(x) for x in t["table9"]["percentage"]])
    modules = dict(zip(t["table10"]["modules"], (float(x) for x in t["table10"]["percentage"])))
    ffn = sum(v for m, v in modules.items() if m.startswith("mlp"))
    ids = dict(model=PAPER_MODEL, training="all", scale="unstated")
    return pd.DataFrame([_point(float(layers[:3].mean() - layers[-2:].mean()), **ids,
                                metric="first 3 minus last 2 layers, share per layer (points)"),
                         _point(ffn, **ids, metric="FFN share (%)")])


def paper_tables() -> Tables:
    """Every artifact the rules read, from the paper's numbers (no KL: the paper prints none)."""
    levels, steps, spread = _accuracy()
    return Tables(accuracy=levels, scale_differences=steps, category_spread=spread,
                  category_differences=_category_pairs(), concentration=_concentration(),
                  restore_test=pd.concat([_restore(paper.table4("test"), "test"),
                                          _restore(paper.table4("testood"), "testood")], ignore_index=True),
                  restore_train=_restore(paper.table6(), "train"), tasks=_tasks(), strategies=_strategies(),
                  layers=_layers(), redundancy=_redundancy())


# --------------------------------------------------------------------------------------------- reversal
def _negate(df: pd.DataFrame, where=None, around: float = 0.0) -> pd.DataFrame:
    """Mirror rows around ``around``: estimate -> 2a - estimate, and the interval's ends swap."""
    df = df.copy()
    m = np.ones(len(df), dtype=bool) if where is None else where(df).to_numpy()
    e, lo, hi = df["estimate"].copy(), df["low"].copy(), df["high"].copy()
    df.loc[m, "estimate"] = 2 * around - e[m]
    df.loc[m, "low"] = 2 * around - hi[m]
    df.loc[m, "high"] = 2 * around - lo[m]
    return df


def _gains(df):
    return df["kind"] == "gain"


REVERSALS = {
    # claim key -> the paper's numbers changed so that the statement's reverse holds
    "phenomenon_1": lambda t: {"scale_differences": _negate(t["scale_differences"])},
    "phenomenon_2": lambda t: {"category_spread": _negate(t["category_spread"]),
                               "category_differences": _negate(t["category_differences"])},
    "table3_concentration": lambda t: {"concentration": _negate(t["concentration"], around=0.70)},
    "table4_gains": lambda t: {"restore_test": _negate(t["restore_test"], _gains)},
    "section5_finding_1": lambda t: {"restore_test": _negate(t["restore_test"], _gains),
                                     "concentration": _negate(t["concentration"], around=0.5)},
    "section5_finding_2": lambda t: {"restore_test": _negate(t["restore_test"], _gains)},
    "table5_tasks": lambda t: {"tasks": _negate(t["tasks"], _gains, around=-TASK_MARGIN)},
    "table6_training": lambda t: {"restore_train": _negate(t["restore_train"], _gains)},
    "table7_strategies": lambda t: {"strategies": _negate(t["strategies"], lambda d: d["kind"] != "level")},
    "appendix_e1": lambda t: {"redundancy": pd.concat(
        [_negate(t["redundancy"].iloc[:1]), _negate(t["redundancy"].iloc[1:], around=50.0)])},
    "table11_layers": lambda t: {"layers": _negate(t["layers"], around=0.5)},
}


def reverse(tables: Tables, claim_key: str) -> Tables:
    """The tables with claim ``claim_key``'s evidence reversed (KeyError for a claim without a reverse)."""
    return Tables({**tables, **REVERSALS[claim_key](tables)})


__all__ = ["PAPER_MODEL", "ASSUMPTIONS", "paper_tables", "reverse", "REVERSALS"]
