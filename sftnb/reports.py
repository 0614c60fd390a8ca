"""Tables and figures as files: every artifact goes to ``figures/<run-name>/`` as ``tableNN_*`` (CSV + Markdown)
or ``figNN_*`` (PNG), written atomically so an interrupted notebook never leaves half a file."""
from __future__ import annotations

import io
from pathlib import Path

import pandas as pd

from .atomic import atomic_write_bytes, atomic_write_text


def save_table(df: pd.DataFrame, folder: Path, name: str, floatfmt: str = ".2f", index: bool = True) -> list[Path]:
    """``name.csv`` and ``name.md``. Files are flat: a multi-level row index becomes ordinary columns and
    multi-level column labels are joined with " / ", so no reader ever sees a tuple as a header."""
    if isinstance(df.columns, pd.MultiIndex):
        df = df.set_axis([" / ".join(map(str, c)) for c in df.columns], axis=1)
    if index and isinstance(df.index, pd.MultiIndex):
        df, index = df.reset_index(), False
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    csv, md = folder / f"{name}.csv", folder / f"{name}.md"
    atomic_write_text(csv, df.to_csv(index=index))
    atomic_write_text(md, df.to_markdown(index=index, floatfmt=floatfmt) + "\n")
    return [csv, md]


def save_figure(fig, folder: Path, name: str, dpi: int = 130) -> Path:
    import matplotlib.pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    atomic_write_bytes(path, buf.getvalue())
    plt.close(fig)
    return path


def mean_std(values) -> str:
    """'54.1 ± 1.2' (std over seeds; a single seed prints the mean alone)."""
    s = pd.Series(list(values), dtype=float).dropna()
    if s.empty:
        return "n/a"
    return f"{s.mean():.2f}" if len(s) == 1 else f"{s.mean():.2f} ± {s.std(ddof=0):.2f}"


def agreement_summary(agreement: dict) -> pd.DataFrame:
    """``Experiment.probe_agreement``'s numbers as a small table (facts, Spearman's rho of R, same category)."""
    return pd.DataFrame({"value": [f"{agreement['facts']}", f"{agreement['spearman_rho']:.3f}",
                                   f"{agreement['same_category']:.1%}"]},
                        index=pd.Index(["facts", "Spearman rho of R", "same category"], name="agreement"))
