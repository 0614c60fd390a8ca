"""Issue 2: relations, answer matching, loaders, built-in facts, params validation."""
import json
import re

import pytest

from sftnb.config import load_config
from sftnb.data import load_entityquestions, load_facts_file, load_source, summary_table
from sftnb.errors import SftnbError
from sftnb.matching import answer_in_text, answer_position, expand_answers
from sftnb.relations import builtin_relations, entityquestions_relations

IN_DOMAIN = {"P17", "P19", "P20", "P36", "P69", "P131", "P159", "P276", "P495", "P740"}


# ------------------------------------------------------------------------------------------ relations
def test_entityquestions_relations_resource():
    rels = entityquestions_relations()
    assert len(rels) == 24
    assert {r for r, v in rels.items() if v.domain == "in"} == IN_DOMAIN
    for rel in rels.values():
        assert len(rel.mapping_templates) == 21 and all("{subject}" in t for t in rel.mapping_templates)
        assert rel.question_template.count("{subject}") == 1


@pytest.mark.parametrize("rel_id", sorted(entityquestions_relations()))
@pytest.mark.parametrize("subject", ["Painblanc", "St. John's, Newfoundland (city)", "Émile Zola Jr."])
def test_subject_extraction_for_every_relation(rel_id, subject):
    rel = entityquestions_relations()[rel_id]
    assert rel.extract_subject(rel.question(subject)) == subject
    assert rel.extract_subject("Completely unrelated text?") is None


def test_builtin_relations_resource():
    rels = builtin_relations()
    assert sum(r.domain == "in" for r in rels.values()) >= 4
    assert sum(r.domain == "out" for r in rels.values()) >= 2
    assert all(len(r.mapping_templates) >= 10 for r in rels.values())


# ------------------------------------------------------------------------------------------ matching
@pytest.mark.parametrize("answers,text,hit", [
    (["United States of America"], "It is in the USA, I think", True),
    (["United States of America"], "the United States", True),
    (["USA"], "United States of America", True),
    (["France"], "Paris is in france.", True),
    (["Iran"], "Tirana is a city", False),                 # inside a longer word: no match
    (["Georgia"], "a Georgian poet", False),
    (["São Paulo"], "He was born in Sao Paulo, Brazil", True),   # diacritics
    (["New York City"], "born in New York", True),         # Table 12 synonym
    (["the Netherlands"], "Amsterdam, Netherlands", True),  # articles ignored
    (["Buenos Aires"], "Buenos is", False),                # multi-word answers need every word
    (["Paris"], "", False),
])
def test_answer_matching(answers, text, hit):
    assert answer_in_text(answers, text) is hit


def test_expand_and_position():
    aliases = {a.lower() for a in expand_answers(["United States of America"])}
    assert {"usa", "united states", "united states of america"} <= aliases
    assert answer_position(["France"], "France, of course") == 0
    assert answer_position(["France"], "It is in France") == 3
    assert answer_position(["France"], "no idea") is None


# ------------------------------------------------------------------------------------------ loaders
def _write(path, records, jsonl=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    if jsonl:
        path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    else:
        path.write_text(json.dumps(records))


def test_loader_counts_on_fixture_files(tmp_path):
    rels = entityquestions_relations()
    q = lambda rid, s: {"question": rels[rid].question(s), "answers": ["X"]}   # noqa: E731
    _write(tmp_path / "train" / "P17.train.json", [q("P17", "A"), q("P17", "B"),
                                                   {"question": "Who knows?", "answers": ["Y"]}])
    _write(tmp_path / "train" / "P106.train.json", [q("P106", "C")])
    _write(tmp_path / "test" / "P36.test.jsonl", [q("P36", "D"), q("P36", "E"), q("P36", "F")], jsonl=True)
    with pytest.warns(UserWarning, match="did not fit"):
        fs = load_entityquestions(tmp_path)
    assert len(fs.facts) == 6
    assert sum(fs.unmatched.values()) == 1 and fs.unmatched[("P17", "train")] == 1
    f = next(f for f in fs.facts if f.subject == "C")
    assert (f.relation, f.split, f.domain, f.answers) == ("P106", "train", "out", ("X",))
    table = summary_table(fs).set_index("relation")
    assert table.loc["P17", "train"] == 2 and table.loc["P17", "unmatched"] == 1
    assert table.loc["P36", "test"] == 3 and table.loc["P106", "domain"] == "out"


@pytest.mark.parametrize("setup,msg", [
    (lambda p: None, "not found"),
    (lambda p: (p / "train").mkdir(parents=True) or (p / "train" / "P17.train.json").write_text("{nope"),
     "not valid JSON"),
    (lambda p: _write(p / "train" / "P9999.train.json", []), "unknown relation id"),
    (lambda p: _write(p / "train" / "P17.train.json", {"a": 1}), "expected a list"),
])
def test_loader_errors_are_one_line(tmp_path, setup, msg):
    root = tmp_path / "eq"
    if msg != "not found":
        root.mkdir()
    setup(root)
    with pytest.raises(SftnbError) as e:
        load_entityquestions(root)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_facts_file(tmp_path):
    p = tmp_path / "facts.jsonl"
    p.write_text(json.dumps({"relation": "country_capital", "subject": "France", "answers": ["Paris"]}) + "\n")
    fs = load_facts_file(p)
    assert fs.facts[0].question == "What is the capital of France?"
    p.write_text("{}\n")
    with pytest.raises(SftnbError):
        load_facts_file(p)


def test_builtin_facts_offline_and_deterministic():
    a, b = load_source("builtin"), load_source("builtin")
    assert len(a.facts) >= 5000 and a.facts == b.facts
    rels = {f.relation for f in a.facts}
    assert len(rels) >= 6
    splits = {f.split for f in a.facts if f.domain == "in"}
    assert splits == {"train", "dev", "test"}
    paris = [f for f in a.facts if f.relation == "country_capital" and f.subject == "France"]
    assert paris and "Paris" in paris[0].answers


def test_entityquestions_official_counts(shared_data):
    fs = load_entityquestions(shared_data)
    got = {(f.split, f.domain) for f in fs.facts}
    assert got == {(s, d) for s in ("train", "dev", "test") for d in ("in", "out")}
    count = lambda s, d: sum(f.split == s and f.domain == d for f in fs.facts)   # noqa: E731
    assert (count("train", "in"), count("train", "out")) == (78611, 97949)
    assert (count("dev", "in"), count("dev", "out")) == (9825, 12243)
    assert (count("test", "in"), count("test", "out")) == (9828, 12247)
    assert len({f.relation for f in fs.facts}) == 24
    assert sum(fs.unmatched.values()) <= 10


# ------------------------------------------------------------------------------------------ params
def test_every_params_file_validates():
    from sftnb.config import project_root
    files = sorted((project_root() / "params").glob("*.yaml"))
    assert {p.stem for p in files} >= {"smoke", "embedded", "entityquestions-smollm2", "paper-llama3-8b"}
    for p in files:
        assert load_config(p).run_name == p.stem


@pytest.mark.parametrize("text,msg", [
    ("run_name: x\ngrid:\n  scales: [60, 120]\n  seedz: [0]\n", "unknown key 'grid.seedz'"),
    ("run_name: x\nsft:\n  learning_rate: fast\n", "sft.learning_rate"),
    ("run_name: x\ngrid:\n  categories: [0, 7]\n", "grid.categories"),
    ("run_name: x\nrestore:\n  k_percents: [0, 20]\n", "restore.k_percents"),
    ("run_name: x\nprobe:\n  temperature: -1\n", "probe.temperature"),
    ("run_name: x\nbogus: 1\n", "unknown key 'bogus'"),
    ("[1, 2]\n", "expected a mapping"),
])
def test_params_errors_name_the_key(tmp_path, text, msg):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(SftnbError) as e:
        load_config(p)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_overrides_merge_key_by_key():
    cfg = load_config("params/smoke.yaml", {"grid": {"seeds": [0, 1]}})
    assert cfg.grid.seeds == [0, 1] and cfg.grid.scales == load_config("params/smoke.yaml").grid.scales
    assert re.fullmatch(r"[\w.-]+", cfg.run_name)
