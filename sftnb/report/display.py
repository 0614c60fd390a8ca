"""How every section shows its numbers: the cell formats of the display tables and the shared pieces of the
figures (error-bar lines over scales, a short title with the full identity in the caption, no empty panel).

Display tables print a level as ``54.1 ± 2.3`` (95 % interval; ``[low, high]`` when asymmetric) and a difference
as ``+3.1 [+0.4, +5.8]*`` (``*``: the interval excludes 0), in percent; a cell computed on fewer than
``eval.min_category_facts`` facts shows its n. Figures draw the same intervals as error bars or bands.
"""
from __future__ import annotations

import textwrap

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from ..data.scales import scale_order
from .stats import Interval


def scale_labels(values) -> list[str]:
    """The scales present, in the paper's order, as the strings the tables use."""
    return [str(v) for v in scale_order(values)]


def interval_of(row) -> Interval:
    return Interval(float(row["estimate"]), float(row["low"]), float(row["high"]), n_seeds=int(row["n_seeds"]),
                    n_items=int(row.get("n_facts", 0) or 0))


def fmt_level(row, scale: float = 100, small: int = 0, digits: int | None = None) -> str:
    """'54.1 ± 2.3' (percent: 1 decimal; a fraction such as R: 3); '(n=7)' appended when the row rests on fewer
    than ``small`` facts."""
    text = interval_of(row).fmt(scale=scale, digits=digits if digits is not None else (1 if scale == 100 else 3))
    n = int(row.get("n_facts", 0) or 0)
    return f"{text} (n={n})" if small and n < small and text != "n/a" else text


def fmt_gain(row, scale: float = 100, digits: int | None = None) -> str:
    return interval_of(row).fmt_diff(scale=scale, digits=digits if digits is not None else (1 if scale == 100 else 3))


def display(frame: pd.DataFrame, index, columns, fmt=fmt_level, order=None) -> pd.DataFrame:
    """A wide table of formatted intervals (one cell per row of ``frame``)."""
    if frame.empty:
        return pd.DataFrame()
    cells = frame.assign(_cell=[fmt(r) for _, r in frame.iterrows()])
    out = cells.pivot_table(index=index, columns=columns, values="_cell", aggfunc="first", sort=False).fillna("")
    if order is not None:
        out = out[[c for c in order if c in out.columns]]
    out.columns.name = None
    return out


def restored_label(k: float) -> str:
    """A restored share as the paper's tables print it: "0", "1%", "20%"."""
    return "0" if k == 0 else f"{k:g}%"


def has_values(frame: pd.DataFrame) -> bool:
    """Does a panel's data hold at least one number to draw? (An aggregate that is n/a everywhere does not.)"""
    return len(frame) > 0 and bool(frame["estimate"].notna().any())


def domain_name(domain: str) -> str:
    return {"test": "in-domain", "testood": "out-of-domain"}.get(domain, domain)


def left_out(domains, metric: str, min_facts: int = 0) -> str:
    """The caption's note for panels left out because their domain has no value of ``metric``."""
    why = (f" (the paper's Acc needs at least {min_facts} facts, eval.min_category_facts, in each of the five "
           f"categories)" if metric == "Acc" and min_facts else "")
    return "".join(f" No {domain_name(d)} panel: {metric.replace('Acc', f'Acc_{d}')} is n/a at every point{why}."
                   for d in domains)


def errorbar_lines(ax, frame: pd.DataFrame, hue: str, order: list[str], scale: float = 100, dashed=()):
    """One line per ``hue`` value across the x ``order``, with the interval as error bars."""
    colours = dict(zip(sorted(frame[hue].unique(), key=str), sns.color_palette("viridis", frame[hue].nunique())))
    for name, grp in frame.groupby(hue, sort=True):
        grp = grp.assign(x=grp["scale"].map(order.index)).sort_values("x")
        y, lo, hi = (scale * grp[c].to_numpy(dtype=float) for c in ("estimate", "low", "high"))
        ax.errorbar(grp["x"], y, yerr=[y - lo, hi - y], marker="o", capsize=3, label=name,
                    color="grey" if name in dashed else colours[name], linestyle="--" if name in dashed else "-")
    ax.set_xticks(range(len(order)), order)
    ax.set_xlabel("fine-tuning samples")


def panels(n: int, width: float = 5.25, height: float = 3.8, **kw):
    """A figure of ``n`` side-by-side panels (at least one) and the list of their axes."""
    fig, axes = plt.subplots(1, max(1, n), figsize=(width * max(1, n), height), squeeze=False, **kw)
    return fig, list(axes[0])


def titled(fig, title: str, caption: str = ""):
    """A short title (the model's name) on top and the caption under the figure: the full identity of the model
    and anything a reader must know to read it (e.g. a panel left out, and why). ``fig.text`` below the axes is
    kept by the ``bbox_inches="tight"`` of ``artifacts.save_figure``."""
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    if caption:
        width = max(60, int(14 * fig.get_figwidth()))
        fig.text(0.5, 0, textwrap.fill(caption, width), ha="center", va="top", fontsize=7)
    return fig


__all__ = ["scale_labels", "interval_of", "fmt_level", "fmt_gain", "display", "restored_label", "has_values",
           "domain_name", "left_out", "errorbar_lines", "panels", "titled"]
