"""The machinery every paper section shares, and no paper section itself (those are ``sftnb.sections``, which
import this package; nothing here imports them: the report takes the sections as arguments).

* ``stats``, ``stats_rank``: intervals (test-fact bootstrap, seed t-intervals, rank correlations);
* ``evidence``: tidy interval rows from stored units (conditions, levels, paired differences);
* ``display``: the cell formats of the display tables and the shared pieces of the figures;
* ``artifacts``: ``Artifact`` (a section's table or figure: its name for the rules and its file prefix),
  ``Output`` (the run's figures folder and the models' identities), ``save_table`` / ``save_figure``;
* ``verdicts``: the verdict vocabulary, ``Claim``, ``Tables`` and the shared mechanics of the rules;
* ``writer``: report.md and report_verdicts.csv from a run's CSVs, each notebook's findings, the README block;
* ``paper``, ``paper_rows``: the paper's own numbers, as printed and as tidy rows for the rules.
"""
from .artifacts import Artifact, ModelOutput, Output, save_figure, save_table
from .writer import (claim_verdicts, claims_of, existing_header, findings, paper_verdicts,
                     readme_block, readme_markers, refresh_report, report_from_csvs, run_header, summary_markdown,
                     tables_from_folder, update_readme, write_report)

__all__ = ["Artifact", "ModelOutput", "Output", "save_figure", "save_table", "readme_markers",
           "claim_verdicts", "claims_of", "existing_header", "findings", "paper_verdicts", "readme_block",
           "refresh_report", "report_from_csvs", "run_header", "summary_markdown", "tables_from_folder",
           "update_readme", "write_report"]
