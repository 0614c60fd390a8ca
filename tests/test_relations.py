"""Relations as data (issue 2, item 4): the paper's 24 EntityQuestions relations and the built-in ones."""
import re
from itertools import product
from pathlib import Path

import pytest

from sftnb.data.relations import (IN_DOMAIN_EQ, Relation, all_relations, builtin_relations, entityquestions_relations,
                             relations_for)

IN_DOMAIN = {"P17", "P19", "P20", "P36", "P69", "P131", "P159", "P276", "P495", "P740"}
OUT_DOMAIN = {"P112", "P127", "P170", "P175", "P176", "P26", "P40", "P413", "P50", "P136", "P106", "P264",
              "P407", "P800"}
ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT.parent / "shared" / "reference" / "paper-ye2025-sft-knowledge.txt"

# Subjects with spaces and punctuation, including text that looks like part of a template.
SUBJECTS = [
    "Painblanc",
    "St. John's, Newfoundland (city)",
    "Émile Zola Jr.",
    "Who? What is located in",
    "AC/DC & the 'Band' - 1999",
    "Shlomo Zalman Auerbach's",
]


# ------------------------------------------------------------------------------------------ EntityQuestions
def test_all_24_relations_with_the_papers_domain_split():
    rels = entityquestions_relations()
    assert set(rels) == IN_DOMAIN | OUT_DOMAIN and len(rels) == 24
    assert {r for r, v in rels.items() if v.domain == "in"} == IN_DOMAIN == set(IN_DOMAIN_EQ)
    assert {r for r, v in rels.items() if v.domain == "out"} == OUT_DOMAIN
    assert all(v.id == k and v.source == "entityquestions" for k, v in rels.items())


@pytest.mark.parametrize("rel_id", sorted(IN_DOMAIN | OUT_DOMAIN))
def test_21_distinct_mapping_templates_each(rel_id):
    rel = entityquestions_relations()[rel_id]
    assert len(rel.mapping_templates) == 21
    assert len(set(rel.mapping_templates)) == 21
    for t in rel.mapping_templates:
        assert t.count("{subject}") == 1 and t == t.strip()
        assert not t.rstrip().endswith("?")                      # a prefix to complete, not a question
    assert rel.question_template.count("{subject}") == 1 and rel.question_template.endswith("?")


def test_templates_are_the_papers_tables_13_to_36():
    """Compare the resource with the paper's appendix F.2, topic by topic (skipped without the paper)."""
    if not PAPER.is_file():
        pytest.skip("../shared/reference/paper-ye2025-sft-knowledge.txt not present")
    text = PAPER.read_text(encoding="utf-8")
    blocks = re.split(r"\nTopic: ", text)[1:]
    assert len(blocks) == 24
    rels = entityquestions_relations()
    for block in blocks:
        rel_id = block.split("\n", 1)[0].strip()
        question = re.search(r"Question Template: (.*)", block).group(1).strip()
        lines = [ln.strip() for ln in block.split("Mapping Templates:", 1)[1].split("\n") if ln.strip()]
        mappings = []
        for ln in lines:
            if "{subject}" not in ln:
                break
            mappings.append(ln)
        assert rels[rel_id].question_template == question, rel_id
        assert list(rels[rel_id].mapping_templates) == mappings[:21], rel_id


def test_question_and_mapping_fill_the_subject():
    rel = entityquestions_relations()["P17"]
    assert rel.question("Painblanc") == "Which country is Painblanc located in?"
    assert rel.mapping(0, "Painblanc") == "Painblanc is located in"
    assert all("Painblanc" in rel.mapping(i, "Painblanc") and "{subject}" not in rel.mapping(i, "Painblanc")
               for i in range(21))
    with pytest.raises(IndexError):
        rel.mapping(21, "Painblanc")


@pytest.mark.parametrize("rel_id,subject", list(product(sorted(IN_DOMAIN | OUT_DOMAIN), SUBJECTS)))
def test_subject_extraction_for_every_relation(rel_id, subject):
    rel = entityquestions_relations()[rel_id]
    question = rel.question(subject)
    assert subject in question and "{subject}" not in question
    assert rel.extract_subject(question) == subject
    assert rel.extract_subject(f"  {question}\n") == subject          # surrounding white space is ignored


@pytest.mark.parametrize("rel_id", sorted(IN_DOMAIN | OUT_DOMAIN))
def test_questions_that_do_not_fit_give_none(rel_id):
    rel = entityquestions_relations()[rel_id]
    q = rel.question("Painblanc")
    assert rel.extract_subject("Completely unrelated text?") is None
    assert rel.extract_subject(q[:-1]) is None                         # final "?" missing
    assert rel.extract_subject("X " + q) is None                       # extra text before the template
    assert rel.extract_subject(rel.question_template.replace("{subject}", "")) is None   # empty subject


def test_a_question_fits_only_its_own_template():
    """Templates tell relations apart, except P131 and P276, which share one in EntityQuestions itself."""
    rels = entityquestions_relations()
    shared = set()
    for a, b in product(rels.values(), rels.values()):
        if a.id != b.id and b.extract_subject(a.question("Foo Bar")) is not None:
            shared.add(frozenset((a.id, b.id)))
    assert shared == {frozenset(("P131", "P276"))}
    assert rels["P131"].question_template == rels["P276"].question_template == "Where is {subject} located?"


# ------------------------------------------------------------------------------------------ built-in
def test_builtin_relations():
    rels = builtin_relations()
    assert sum(r.domain == "in" for r in rels.values()) >= 4
    assert sum(r.domain == "out" for r in rels.values()) >= 2
    assert {r.domain for r in rels.values()} == {"in", "out"}
    for rel in rels.values():
        assert rel.source == "builtin"
        assert len(rel.mapping_templates) >= 10 and len(set(rel.mapping_templates)) == len(rel.mapping_templates)
        assert all(t.count("{subject}") == 1 for t in rel.mapping_templates)
        assert rel.question_template.count("{subject}") == 1
        for subject in SUBJECTS:
            assert rel.extract_subject(rel.question(subject)) == subject
    assert not set(rels) & set(entityquestions_relations())          # ids never collide


def test_relations_for_and_all_relations():
    assert relations_for("entityquestions") is entityquestions_relations()
    assert relations_for("builtin") is builtin_relations()
    with pytest.raises(ValueError, match="unknown data source"):
        relations_for("wikidata")
    allr = all_relations()
    assert len(allr) == 24 + len(builtin_relations())
    assert isinstance(allr["P17"], Relation) and allr["P17"].source == "entityquestions"
