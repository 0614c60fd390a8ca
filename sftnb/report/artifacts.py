"""Tables and figures as files: every artifact goes to ``figures/<run-name>/`` as ``tableNN_*`` / ``figNN_*``,
written atomically so an interrupted notebook never leaves half a file.

An ``Artifact`` is one table or figure a paper section (``sftnb.sections``) writes for each model, declared once
by that section: the name the claims' rules read it under (``"restore_test"``) and the file prefix the notebooks
save it under (``"table04_restore_test"``, then ``_<model>``). ``writer`` finds a run's CSVs through these
declarations. ``Output`` is what a notebook hands a section: the run's figures folder and each model's identity.

A table is two files with one stem: ``name.md`` for people (formatted intervals, a caption naming the model) and
``name.csv`` for programs (the tidy numbers behind it: estimate, low, high ...), which ``sftnb.report`` reads to
compute its verdicts. A figure is ``name.png`` plus, where it plots intervals, the CSV of what it plots.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from ..infra.atomic import atomic_write_bytes, atomic_write_text


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


# --------------------------------------------------------------------------------------------- declarations
@dataclass(frozen=True)
class Artifact:
    """One table or figure of a paper section, written as ``<prefix>_<model>.{csv,md,png}``.

    ``further``: the prefix for the models after the first where the paper numbers the figure apart (Figure 6
    repeats Figure 2 for further models); ``per_model=False``: one file for the run, ``<prefix>.*``; ``rows``:
    what of the CSV the rules read (e.g. only the KL rows of a figure that plots two metrics)."""
    name: str
    prefix: str
    further: str | None = None
    per_model: bool = True
    rows: Callable[[pd.DataFrame], pd.DataFrame] | None = None

    def stem(self, model: str | None = None, first: bool = True) -> str:
        prefix = self.prefix if first or self.further is None else self.further
        return f"{prefix}_{model}" if self.per_model and model is not None else prefix

    def patterns(self) -> tuple[str, ...]:
        """The file names of this artifact's CSVs, every model's, as globs."""
        star = "_*" if self.per_model else ""
        return tuple(f"{p}{star}.csv" for p in (self.prefix, self.further) if p)

    def read(self, folder: str | Path) -> pd.DataFrame:
        """Every model's rows, concatenated (empty when none were written)."""
        frames = []
        for pattern in self.patterns():
            for p in sorted(Path(folder).glob(pattern)):
                try:
                    frames.append(pd.read_csv(p))
                except pd.errors.EmptyDataError:            # a table with no rows (nothing to compare for that model)
                    continue
        out = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
        return self.rows(out) if self.rows is not None and len(out) else out


# --------------------------------------------------------------------------------------------- where they go
@dataclass(frozen=True)
class ModelOutput:
    """One model's tables and figures: its file-name suffix, its identity (captions), and whether it is the first
    model of its experiment (Figure 2 rather than Figure 6); ``min_facts``: the run's ``eval.min_category_facts``
    (the fewest facts a category needs for the paper's Acc)."""
    folder: Path
    name: str
    identity: str
    first: bool = True
    min_facts: int = 0

    def table(self, artifact: Artifact, shown: pd.DataFrame, data: pd.DataFrame | None = None, caption: str = "",
              index: bool = True, floatfmt: str = ".2f") -> pd.DataFrame:
        """Save ``shown`` (markdown, under ``caption``) and ``data`` (CSV) under the artifact; returns ``shown``."""
        save_table(shown, self.folder, artifact.stem(self.name, self.first), data=data, caption=caption,
                   floatfmt=floatfmt, index=index)
        return shown

    def figure(self, artifact: Artifact, fig, data: pd.DataFrame | None = None):
        """Save the figure (and ``data``, what it plots) under the artifact; returns the figure."""
        return save_figure(fig, self.folder, artifact.stem(self.name, self.first), data=data)


class Output:
    """What a notebook hands every section call: the run's figures folder, how to name a model in full
    (``identity``: model config -> its full description, ``ModelRun.identity``) and ``eval.min_category_facts``."""

    def __init__(self, folder: str | Path, identity: Callable[[Any], str], min_facts: int = 0):
        self.folder, self.identity, self.min_facts = Path(folder), identity, min_facts

    def model(self, mc, first: bool = True) -> ModelOutput:
        """The output of one model (``mc``: a model config, with ``.name``); ``first=False`` for the models after
        the first where the paper numbers their figure apart (Figure 6)."""
        return ModelOutput(self.folder, mc.name, self.identity(mc), first, self.min_facts)

    def whole_run(self, identity: str = "") -> ModelOutput:
        """The output of a table or figure of the whole run (an ``Artifact`` with ``per_model=False``)."""
        return ModelOutput(self.folder, "", identity, True, self.min_facts)


__all__ = ["Artifact", "ModelOutput", "Output", "save_table", "save_figure"]
