"""The paper's sections (sftnb.sections) and the report's machinery (sftnb.report, issue 24): the claims in the
paper's order, each reading only the artifacts it declares; artifact names and file prefixes declared once; a
section call saves under its artifact, titles a figure with the model's name, captions it with the identity and
leaves out a panel without data; each notebook's findings are generated from its CSVs."""
import math

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from sftnb import report, sections
from sftnb.data.correctness import pack_correct
from sftnb.grid import RunKey
from sftnb.report import paper_rows
from sftnb.report.artifacts import Artifact, ModelOutput
from sftnb.report.verdicts import Tables, in_paper_order

PAPER_ORDER = ["phenomenon_1", "phenomenon_2", "section4_finding_1", "section4_finding_2", "table3_concentration",
               "table4_gains", "section5_finding_1", "section5_finding_2", "table5_tasks", "table6_training",
               "table7_strategies", "appendix_e1", "table11_layers"]


def test_the_claims_come_in_the_papers_order_from_the_sections():
    assert [c.key for c in sections.CLAIMS] == PAPER_ORDER
    assert sections.mastery.CLAIMS == []                                  # notebook 01 judges nothing
    # places sort the main text before the appendices; claims of one place keep their section's order
    assert [c.key for c in in_paper_order(reversed(sections.CLAIMS))][:2] == ["phenomenon_2", "phenomenon_1"]
    assert [c.key for c in report.claims_of([sections.layers, sections.sft_grid])] == \
        ["phenomenon_1", "phenomenon_2", "table11_layers"]


def test_artifacts_are_declared_once_and_every_claim_reads_declared_ones():
    names = [a.name for a in sections.ARTIFACTS]
    prefixes = [p for a in sections.ARTIFACTS for p in (a.prefix, a.further) if p]
    assert len(names) == len(set(names)) and len(prefixes) == len(set(prefixes))
    declared = set(sections.ARTIFACTS)
    for claim in sections.CLAIMS:
        assert claim.needs and set(claim.needs) <= declared, claim.key
    a = sections.sft_grid.ACCURACY
    assert a.stem("M") == "fig02_accuracy_vs_scale_M" and a.stem("M", first=False) == "fig06_accuracy_vs_scale_M"
    assert a.patterns() == ("fig02_accuracy_vs_scale_*.csv", "fig06_accuracy_vs_scale_*.csv")
    assert Artifact("units", "table02_units", per_model=False).stem("M") == "table02_units"


@pytest.mark.parametrize("key", [None] + sorted(paper_rows.REVERSALS))
def test_each_claim_reads_only_the_artifacts_it_names(key):
    """A rule given only the tables its claim declares judges as it does with every table: nothing it reads is
    missing from ``needs`` (else a notebook's findings, which read only its claims' needs, would differ)."""
    full = paper_rows.paper_tables()
    full = paper_rows.reverse(full, key) if key else full
    for claim in sections.CLAIMS:
        only = Tables({a.name: full[a.name] for a in claim.needs if a.name in full})
        assert [(r.model, r.verdict, r.lines) for r in claim.rule(only)] == \
            [(r.model, r.verdict, r.lines) for r in claim.rule(full)], claim.key


# ---------------------------------------------------------------------------------------------- a section call
def _per_set(correct_by_set: dict) -> dict:
    return {n: {"n": len(c), "accuracy": (sum(c) / len(c)) if c else math.nan, "correct": pack_correct(c)}
            for n, c in correct_by_set.items()}


def _grid(ood_last_category: int) -> dict:
    """Two categories at two scales, three seeds; every test category has 40 facts, the out-of-domain category 4
    has ``ood_last_category``."""
    rng = np.random.default_rng(0)
    results = {}
    for cat in (0, 2):
        for scale in (60, 240):
            for seed in range(3):
                sets = {**{f"test-{c}": list(rng.random(40) < 0.5) for c in range(5)},
                        **{f"testood-{c}": list(rng.random(40 if c < 4 else ood_last_category) < 0.3)
                           for c in range(5)}}
                results[RunKey("divided", cat, scale, seed)] = {"per_set": _per_set(sets)}
    return results


def _texts(fig) -> str:
    return " ".join(" | ".join(t.get_text() for t in fig.texts).split())     # captions are wrapped


@pytest.mark.parametrize("ood_facts, panels", [(40, 2), (3, 1)])
def test_a_section_call_saves_its_artifact_and_leaves_out_an_empty_panel(tmp_path, ood_facts, panels):
    out = ModelOutput(tmp_path, "M", "M: a tiny model, computed in float32", first=False, min_facts=20)
    before = set(plt.get_fignums())
    cells = sections.sft_grid.accuracy_figure(_grid(ood_facts), out)
    fig = plt.figure(max(set(plt.get_fignums()) - before))
    assert (tmp_path / "fig06_accuracy_vs_scale_M.png").is_file()
    assert pd.read_csv(tmp_path / "fig06_accuracy_vs_scale_M.csv").shape[0] == len(cells)
    axes = [ax for ax in fig.axes if ax.has_data()]
    assert len(axes) == panels and axes[0].get_title() == "in-domain"
    text = _texts(fig)
    assert "M: a tiny model, computed in float32." in text                 # the identity: in the caption
    assert ("No out-of-domain panel" in text) == (panels == 1)
    if panels == 1:
        assert "Acc_testood is n/a at every point" in text and "at least 20 facts" in text
    plt.close(fig)
    shown = sections.sft_grid.per_category_table(cells, "test", out)
    md = (tmp_path / "table02_test_M.md").read_text()
    assert md.startswith("Accuracy (%) per test category, 95 % intervals. M: a tiny model") and len(shown) == 2


def test_findings_give_one_generated_sentence_per_claim_and_model(tmp_path):
    from test_figures import spread_rows_and_cells

    spread, cells = spread_rows_and_cells()
    pd.DataFrame(cells).to_csv(tmp_path / "fig02_accuracy_vs_scale_M.csv", index=False)
    pd.DataFrame(spread).to_csv(tmp_path / "table02_spread_M.csv", index=False)
    text = report.findings(tmp_path, [sections.sft_grid])
    sentences = [line for line in text.splitlines() if line.startswith("- ")]
    assert len(sentences) == 2
    assert sentences[1].startswith("- Phenomenon 2 (§3.4): the spread across training categories, M: **shown** "
                                   "(inside the claim's domain") and "spread at n=1920" in sentences[1]
    assert "**no data**" in sentences[0] or "**out of range**" in sentences[0]
    assert report.findings(tmp_path, [sections.mastery]) == "(these sections declare no claims)"
