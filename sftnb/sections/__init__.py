"""The paper, one module per section: each holds that section's rows (tidy interval tables from the stored
results), its display (tables and figures), its artifact declarations (``report.Artifact``: the name the rules
read and the file prefix the notebooks save under) and its claims (``report.verdicts.Claim`` with their rules).

Each module offers one function per displayed table or figure, which a notebook calls in one line: it takes the
results the notebook got from a ``ModelRun`` (``exp.model(name)``) or ``param_analysis`` and a
``report.ModelOutput`` (the figures folder and the model's identity), builds the rows, saves CSV / markdown /
figure under the artifact's name and returns what the notebook displays.

These modules import ``sftnb.report``; nothing in ``sftnb.report`` imports them (the report takes the sections as
arguments). ``SECTIONS`` lists them in the paper's order; ``CLAIMS`` is every claim in the paper's order, which is
the order of report.md.
"""
from ..report.writer import claims_of
from . import layers, mastery, param_updates, restoration, sft_grid, strategies, tasks, token_kl

SECTIONS = (mastery, sft_grid, token_kl, param_updates, restoration, tasks, strategies, layers)
CLAIMS = claims_of(SECTIONS)
ARTIFACTS = tuple(a for s in SECTIONS for a in s.ARTIFACTS)

__all__ = ["SECTIONS", "CLAIMS", "ARTIFACTS", "mastery", "sft_grid", "token_kl", "param_updates", "restoration",
           "tasks", "strategies", "layers"]
