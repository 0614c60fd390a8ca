"""Table 5 of the paper (§5.2; notebook 05): restoring parameters of a model fine-tuned on other tasks (math,
summarisation; ``sftnb.tasks`` runs them) and whether their scores hold up to k = 20 %.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd

from ..report import paper
from ..report.artifacts import Artifact, ModelOutput
from ..report.display import fmt_gain, fmt_level, restored_label
from ..report.evidence import interval_row
from ..report.stats import ci_difference, ci_level
from ..report.verdicts import (INCONCLUSIVE, OPPOSITE, OUT_OF_RANGE, SHOWN, TASK_MARGIN, Claim, Result, Tables,
                               family_lines, holm_signs)

TASKS = Artifact("tasks", "table05_tasks")
ARTIFACTS = (TASKS,)


# --------------------------------------------------------------------------------------------- rows
def task_rows(sweeps: dict, model: str) -> pd.DataFrame:
    """Table 5: per task and metric column, the score before SFT, after SFT (k = 0) and after restoring each k %
    (levels over the test examples and seeds), and each restored k's change from k = 0 (paired over examples and
    seeds). ``sweeps``: {(task, seed): ``param_analysis.task_sweep`` result}."""
    by_task: dict[str, list] = defaultdict(list)
    for (task, seed), res in sorted(sweeps.items(), key=lambda kv: kv[0]):
        by_task[task].append(res)
    rows = []
    for task, runs in by_task.items():
        ks = [r["k"] for r in runs[0]["rows"]]
        for col in runs[0]["rows"][0]["scores"]:
            vals = {k: np.array([[x for x in r["rows"][i]["scores"][col]] for r in runs], dtype=float)
                    for i, k in enumerate(ks)}
            for k in ks:
                rows.append(interval_row(ci_level(vals[k], None, aggregate="pooled"), model=model, task=task,
                                 metric=col, k=k, kind="level"))
                if k not in (0, "pre-SFT"):
                    rows.append(interval_row(ci_difference(vals[0], vals[k], None, paired_seeds=True, aggregate="pooled"),
                                     model=model, task=task, metric=col, k=k, kind="gain"))
            rows.append(interval_row(ci_difference(vals["pre-SFT"], vals[0], None, paired_seeds=True, aggregate="pooled"),
                             model=model, task=task, metric=col, k=0, kind="SFT vs pre-SFT"))
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------- display
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
        restored = "pre-SFT" if r["k"] == "pre-SFT" else restored_label(float(r["k"]))
        cells.append({"restored": restored, "column": f"{r['task']} {r['metric']}", "cell": text})
    out = pd.DataFrame(cells).pivot_table(index="restored", columns="column", values="cell", aggfunc="first",
                                          sort=False)
    out.columns.name = None
    return out


# --------------------------------------------------------------------------------------------- notebook 05
def tasks_table(sweeps: dict, out: ModelOutput) -> pd.DataFrame:
    """Table 5, saved with its rows. ``sweeps``: {(task, seed): ``param_analysis.task_sweep`` result}."""
    rows = task_rows(sweeps, out.name)
    return out.table(TASKS, task_table(rows), data=rows,
                     caption=f"Task scores (%) after restoring k %. {out.identity}.")


# --------------------------------------------------------------------------------------------- the claim
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


def paper_table5() -> str:
    t = paper.paper_results()["tables"]["table5"]
    i = t["restore"].index("20%")
    return "Table 5, change at 20 %: " + ", ".join(
        f"{task} {m} {float(v[i]) - float(v[0]):+.2f}" for task in ("XSum", "GSM8K") for m, v in t[task].items()) + "."


CLAIMS = [
    Claim("Table 5 (§5.2): restoring <= 20 % keeps other tasks", "table5_tasks", "§5.2",
          "LLaMA-3-8B on XSum and GSM8K, k = 1-20 %", table5, (TASKS,), paper_table5),
]

__all__ = ["ARTIFACTS", "CLAIMS", "TASKS", "task_rows", "task_table", "tasks_table", "table5"]
