"""Every number the tables and figures compare, with its uncertainty: the shared mechanics of the tidy interval
tables each paper section (``sftnb.sections``) builds from the stored units.

Each evaluation stores per-fact correctness (``sftnb.data.correctness.pack_correct``) and each grid unit the per-example
first-token KL, so any comparison can be bootstrapped over the *same* test facts. A *condition* is one training
configuration over its seeds: a [n_seeds, n_facts] array on a domain's facts in a fixed order (category 0's facts,
then 1's, ...) whose strata are the categories. ``stats`` turns conditions into intervals (test-fact bootstrap +
seed t-interval) and differences of conditions into paired intervals.

Every row builder returns tidy rows with ``estimate``, ``low``, ``high`` (95 %; accuracies as fractions) plus what
identifies the row; the sections save them as CSVs and draw and format them (``display``), and ``writer`` reads
the CSVs back to compute the verdicts. Accuracy rows say which aggregate they are: ``Acc`` is the paper's (mean of
the five category accuracies; n/a when a category has fewer than ``eval.min_category_facts`` facts),
``Acc (pooled)`` the count-weighted one.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np
import pandas as pd

from ..data.correctness import unpack_correct
from ..data.facts import CATEGORIES
from .stats import Interval, ci_difference, ci_level

DOMAINS = ("test", "testood")
AGGREGATES = {"Acc": "category", "Acc (pooled)": "pooled"}


# --------------------------------------------------------------------------------------------- conditions
def domain_correctness(per_set_runs: Sequence[dict], domain: str) -> tuple[np.ndarray, np.ndarray]:
    """([n_runs, n_facts] 0/1, strata [n_facts]) of one domain ("test", "testood") from stored ``per_set`` dicts
    (one per seed), facts ordered by category."""
    names = [f"{domain}-{c}" for c in CATEGORIES]
    rows = [np.concatenate([np.array(unpack_correct(ps[n]["correct"]), dtype=float) if n in ps else np.zeros(0)
                            for n in names]) for ps in per_set_runs]
    first = per_set_runs[0]
    strata = np.concatenate([np.full(first[n]["n"] if n in first else 0, c) for c, n in zip(CATEGORIES, names)])
    return np.stack(rows), strata.astype(int)


def set_correctness(per_set_runs: Sequence[dict], name: str) -> np.ndarray:
    """[n_runs, n] 0/1 of one named set (e.g. each run's own training set: the same size, other facts)."""
    return np.stack([np.array(unpack_correct(ps[name]["correct"]), dtype=float) for ps in per_set_runs])


def interval_row(interval: Interval, **ids) -> dict:
    """A tidy row: what identifies it, n_seeds, n_facts and the interval."""
    return {**ids, "n_seeds": interval.n_seeds, "n_facts": interval.n_items, "estimate": interval.estimate,
            "low": interval.low, "high": interval.high}


def level_rows(per_set_runs: Sequence[dict], min_facts: int, categories: bool = True, **ids) -> list[dict]:
    """Acc, Acc (pooled) and (``categories``) Acc-i for both domains of one condition."""
    rows = []
    for domain in DOMAINS:
        correct, strata = domain_correctness(per_set_runs, domain)
        if correct.shape[1] == 0:
            continue
        for metric, agg in AGGREGATES.items():
            rows.append(interval_row(ci_level(correct, strata, aggregate=agg, min_per_category=min_facts),
                             domain=domain, metric=metric, **ids))
        for c in CATEGORIES if categories else ():
            sel = strata == c
            if sel.any():
                rows.append(interval_row(ci_level(correct[:, sel], None, aggregate="pooled"), domain=domain,
                                 metric=f"Acc-{c}", **ids))
    return rows


def difference_row(a_runs: Sequence[dict], b_runs: Sequence[dict], domain: str, metric: str, min_facts: int,
                   paired_seeds: bool, **ids) -> dict:
    """Acc(b) - Acc(a) on one domain, paired over facts (and over seeds when they are the same models)."""
    a, strata = domain_correctness(a_runs, domain)
    b, _ = domain_correctness(b_runs, domain)
    iv = ci_difference(a, b, strata, paired_seeds=paired_seeds, aggregate=AGGREGATES[metric],
                       min_per_category=min_facts)
    return interval_row(iv, domain=domain, metric=metric, **ids)


def headline_metric(cells: pd.DataFrame) -> str:
    """The aggregate verdicts use: the paper's Acc where it is defined for every cell, else Acc (pooled)."""
    acc = cells[(cells["metric"] == "Acc") & (cells["domain"] == "test")]
    return "Acc" if len(acc) and acc["estimate"].notna().all() else "Acc (pooled)"


# --------------------------------------------------------------------------------------------- grid units
def group_runs(results: dict) -> dict[tuple, list[tuple[int, dict]]]:
    """{(kind, category, scale): [(seed, unit result), ...]} from {RunKey: unit result or None}."""
    groups: dict[tuple, list] = defaultdict(list)
    for key, res in results.items():
        if res is not None:
            groups[(key.kind, key.category, key.scale)].append((key.seed, res))
    return {g: sorted(v, key=lambda x: x[0]) for g, v in groups.items()}


def training_label(kind: str, category) -> str:
    return f"D_train-{category}" if kind == "divided" else kind


def pick(frame: pd.DataFrame, **where) -> pd.DataFrame:
    """Rows of a tidy table matching every ``column=value`` (a small helper for notebooks and the report)."""
    mask = np.ones(len(frame), dtype=bool)
    for col, val in where.items():
        mask &= (frame[col] == val).to_numpy() if not isinstance(val, (list, tuple, set)) \
            else frame[col].isin(val).to_numpy()
    return frame[mask]




__all__ = ["DOMAINS", "AGGREGATES", "domain_correctness", "set_correctness", "interval_row", "level_rows",
           "difference_row", "headline_metric", "group_runs", "training_label", "pick"]
