"""Tables and figures as files: every artifact goes to ``figures/<run-name>/`` as ``tableNN_*`` / ``figNN_*``,
written atomically so an interrupted notebook never leaves half a file.

A table is two files with one stem: ``name.md`` for people (formatted intervals, a caption naming the model) and
``name.csv`` for programs (the tidy numbers behind it: estimate, low, high ...), which ``sftnb.report`` reads to
compute its verdicts. A figure is ``name.png`` plus, where it plots intervals, the CSV of what it plots.
"""
from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from .atomic import atomic_write_bytes, atomic_write_text


def _flat(df: pd.DataFrame, index: bool) -> tuple[pd.DataFrame, bool]:
    """Multi-level labels joined with " / " and a multi-level row index made ordinary columns: no reader ever
    sees a tuple as a header."""
    if isinstance(df.columns, pd.MultiIndex):
        df = df.set_axis([" / ".join(map(str, c)) for c in df.columns], axis=1)
    if index and isinstance(df.index, pd.MultiIndex):
        df, index = df.reset_index(), False
    return df, index


def save_table(df: pd.DataFrame, folder: Path, name: str, data: pd.DataFrame | None = None, caption: str = "",
               floatfmt: str = ".2f", index: bool = True) -> list[Path]:
    """``name.md`` (``df``, under ``caption``) and ``name.csv`` (``data`` if given, the tidy numbers behind
    ``df``; else ``df`` itself)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shown, shown_index = _flat(df, index)
    csv, md = folder / f"{name}.csv", folder / f"{name}.md"
    if data is not None:
        atomic_write_text(csv, data.to_csv(index=False))
    else:
        atomic_write_text(csv, shown.to_csv(index=shown_index))
    body = shown.to_markdown(index=shown_index, floatfmt=floatfmt) if len(shown.columns) else "(no rows)"
    atomic_write_text(md, (f"{caption}\n\n" if caption else "") + body + "\n")
    return [csv, md]


def save_figure(fig, folder: Path, name: str, data: pd.DataFrame | None = None, dpi: int = 130, close: bool = False):
    """``name.png`` (and ``name.csv`` with ``data``). The figure stays open so a notebook shows it inline (the
    inline backend closes it after display); scripts pass ``close=True``."""
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    atomic_write_bytes(folder / f"{name}.png", buf.getvalue())
    if data is not None:
        atomic_write_text(folder / f"{name}.csv", data.to_csv(index=False))
    if close:
        plt.close(fig)
    return fig


def agreement_summary(agreement: dict) -> pd.DataFrame:
    """``Experiment.probe_agreement``'s numbers as a small table (facts, Spearman's rho of R, same category)."""
    return pd.DataFrame({"value": [f"{agreement['facts']}", f"{agreement['spearman_rho']:.3f}",
                                   f"{agreement['same_category']:.1%}"]},
                        index=pd.Index(["facts", "Spearman rho of R", "same category"], name="agreement"))
