"""Fact loaders (issue 2, items 5-6): EntityQuestions at any path, JSONL facts files, the built-in facts."""
import hashlib
import json
import subprocess
import sys
from collections import Counter

import pytest

from sftnb.data.builtin import builtin_triples, load_builtin
from sftnb.data.sources import (Fact, FactSet, domain_totals, load_entityquestions, load_facts_file, load_source,
                        paper_splits, subsample_per_relation, summary_table)
from sftnb.infra.errors import SftnbError
from sftnb.data.relations import builtin_relations, entityquestions_relations

EQ = entityquestions_relations()


def _write(path, records, jsonl=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    if jsonl:
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    else:
        path.write_text(json.dumps(records, indent=2), encoding="utf-8")
    return path


def _q(rel_id, subject, *answers):
    return {"question": EQ[rel_id].question(subject), "answers": list(answers or ["X"])}


@pytest.fixture
def eq_dir(tmp_path):
    """A small dataset in the official layout: .json and .jsonl files, both domains, all three splits."""
    root = tmp_path / "eq"
    _write(root / "train" / "P17.train.json", [
        _q("P17", "Painblanc", "France"),
        _q("P17", "Detroit City Council", "United States of America"),
        {"question": "Who knows where this is?", "answers": ["Nowhere"]},        # does not fit P17
        _q("P17", "St. John's, Newfoundland", "Canada"),
    ])
    _write(root / "train" / "P106.train.json", [_q("P106", "Marie Curie", "physicist", "chemist")])
    _write(root / "dev" / "P36.dev.jsonl", [_q("P36", "France", "Paris")], jsonl=True)
    _write(root / "test" / "P36.test.jsonl", [_q("P36", "Japan", "Tokyo"), _q("P36", "Peru", "Lima"),
                                              {"question": "What is the capitol of Peru?", "answers": ["Lima"]}],
           jsonl=True)
    _write(root / "test" / "P40.test.json", [{"question": "Who is Shlomo Zalman Auerbach's child?",
                                              "answers": [1999]}])                # non-string answer
    (root / "test" / "README.txt").write_text("not a data file")                  # ignored: not P<id>.<split>.*
    return root


# ------------------------------------------------------------------------------------------ EntityQuestions
def test_loader_counts_and_typed_records(eq_dir):
    with pytest.warns(UserWarning, match="2 EntityQuestions questions did not fit"):
        fs = load_entityquestions(eq_dir)
    assert isinstance(fs, FactSet) and fs.source == "entityquestions"
    assert len(fs.facts) == 8
    assert Counter((f.relation, f.split) for f in fs.facts) == {
        ("P17", "train"): 3, ("P106", "train"): 1, ("P36", "dev"): 1, ("P36", "test"): 2, ("P40", "test"): 1}
    assert Counter(f.domain for f in fs.facts) == {"in": 6, "out": 2}

    by_subject = {f.subject: f for f in fs.facts}
    assert by_subject["Painblanc"] == Fact("P17", "Painblanc", ("France",), "train", "in",
                                           "Which country is Painblanc located in?")
    curie = by_subject["Marie Curie"]
    assert (curie.relation, curie.split, curie.domain, curie.answers) == ("P106", "train", "out",
                                                                          ("physicist", "chemist"))
    assert by_subject["St. John's, Newfoundland"].answers == ("Canada",)
    child = by_subject["Shlomo Zalman Auerbach"]                  # apostrophe-s belongs to the template
    assert child.answers == ("1999",) and isinstance(child.answers[0], str)
    assert by_subject["France"].split == "dev"
    for f in fs.facts:
        assert isinstance(f.answers, tuple) and f.question == EQ[f.relation].question(f.subject)


def test_unmatched_questions_are_counted_and_reported(eq_dir):
    with pytest.warns(UserWarning):
        fs = load_entityquestions(eq_dir)
    assert fs.unmatched == Counter({("P17", "train"): 1, ("P36", "test"): 1})
    assert fs.unmatched_examples == ["P17.train.json: Who knows where this is?",
                                     "P36.test.jsonl: What is the capitol of Peru?"]
    table = summary_table(fs).set_index("relation")
    assert list(table.index) == ["P17", "P36", "P106", "P40"]         # in-domain first
    assert table.loc["P17", ["train", "dev", "test", "unmatched"]].tolist() == [3, 0, 0, 1]
    assert table.loc["P36", ["train", "dev", "test", "unmatched"]].tolist() == [0, 1, 2, 1]
    assert table.loc["P106", "domain"] == "out" and table.loc["P106", "unmatched"] == 0
    totals = domain_totals(summary_table(fs))
    assert totals.loc["in", ["train", "dev", "test", "unmatched", "relations"]].tolist() == [3, 1, 2, 2, 2]
    assert totals.loc["out", ["train", "dev", "test", "unmatched", "relations"]].tolist() == [1, 0, 1, 0, 2]
    assert totals.loc["all", ["train", "dev", "test", "unmatched", "relations"]].tolist() == [4, 1, 3, 2, 4]


def test_a_relation_whose_questions_all_fail_still_shows_up(tmp_path):
    _write(tmp_path / "train" / "P19.train.json", [{"question": "nonsense", "answers": ["x"]}])
    with pytest.warns(UserWarning):
        fs = load_entityquestions(tmp_path)
    assert fs.facts == [] and sum(fs.unmatched.values()) == 1
    assert summary_table(fs).to_dict("records") == [
        {"relation": "P19", "domain": "in", "train": 0, "dev": 0, "test": 0, "unmatched": 1}]


def test_no_warning_when_everything_fits(tmp_path):
    _write(tmp_path / "test" / "P17.test.json", [_q("P17", "A"), _q("P17", "B")])
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fs = load_entityquestions(tmp_path)
    assert len(fs.facts) == 2 and not fs.unmatched


def test_split_and_relation_filters(eq_dir):
    with pytest.warns(UserWarning):
        fs = load_entityquestions(eq_dir, splits=["test"])
    assert {f.split for f in fs.facts} == {"test"} and len(fs.facts) == 3
    fs = load_entityquestions(eq_dir, relations=["P106"])
    assert [(f.relation, f.subject) for f in fs.facts] == [("P106", "Marie Curie")]
    with pytest.raises(SftnbError, match="unknown EntityQuestions relation"):
        load_entityquestions(eq_dir, relations=["P9999"])
    with pytest.raises(SftnbError, match="unknown split"):
        load_entityquestions(eq_dir, splits=["validation"])


def _one_line_error(fn, *args):
    with pytest.raises(SftnbError) as e:
        fn(*args)
    msg = str(e.value)
    assert msg and "\n" not in msg and "Traceback" not in msg
    return msg


@pytest.mark.parametrize("case,expect", [
    ("missing", "not found"),
    ("a file", "not a directory"),
    ("empty", "no EntityQuestions files"),
    ("garbage json", "not valid JSON"),
    ("empty json", "not valid JSON"),
    ("bad jsonl line", "not valid JSON"),
    ("binary", "not UTF-8"),
    ("not a list", "expected a list"),
    ("no answers", "record 0 needs"),
    ("empty answers", "record 1 needs"),
    ("unknown id", "unknown relation id 'P9999'"),
    ("folder as file", "cannot read"),
])
def test_loader_errors_are_one_line(tmp_path, case, expect):
    root = tmp_path / "eq"
    if case != "missing":
        root.mkdir()
    train = root / "train"
    if case == "a file":
        root.rmdir()
        root.write_text("[]")
    elif case == "empty":
        train.mkdir()
    elif case == "garbage json":
        _write(train / "P17.train.json", []).write_text("{nope")
    elif case == "empty json":
        _write(train / "P17.train.json", []).write_text("")
    elif case == "bad jsonl line":
        _write(train / "P17.train.jsonl", [_q("P17", "A")], jsonl=True).write_text(
            json.dumps(_q("P17", "A")) + "\n{oops\n")
    elif case == "binary":
        _write(train / "P17.train.json", []).write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    elif case == "not a list":
        _write(train / "P17.train.json", {"question": "q", "answers": ["a"]})
    elif case == "no answers":
        _write(train / "P17.train.json", [{"question": "Which country is A located in?"}])
    elif case == "empty answers":
        _write(train / "P17.train.json", [_q("P17", "A"), {"question": _q("P17", "B")["question"], "answers": []}])
    elif case == "unknown id":
        _write(train / "P17.train.json", [_q("P17", "A")])
        _write(train / "P9999.train.json", [_q("P17", "A")])
    elif case == "folder as file":
        (train / "P17.train.json").mkdir(parents=True)
    msg = _one_line_error(load_entityquestions, root)
    assert expect in msg
    if case not in ("missing", "a file", "empty"):
        assert str(train) in msg                               # the message names the bad file


# ------------------------------------------------------------------------------------------ facts files
def test_facts_file(tmp_path):
    p = tmp_path / "facts.jsonl"
    p.write_text("\n".join([
        json.dumps({"relation": "country_capital", "subject": "France", "answers": ["Paris"]}),
        "",
        json.dumps({"relation": "P106", "subject": "Marie Curie", "answers": ["physicist"], "split": "train"}),
    ]) + "\n")
    fs = load_facts_file(p)
    assert [(f.relation, f.subject, f.split, f.domain) for f in fs.facts] == [
        ("country_capital", "France", "test", "in"), ("P106", "Marie Curie", "train", "out")]
    assert fs.facts[0].question == "What is the capital of France?"
    assert set(fs.relations) == {"country_capital", "P106"}
    assert load_facts_file(p, default_split="dev").facts[0].split == "dev"
    assert load_source("file", p).facts == fs.facts


@pytest.mark.parametrize("text,expect", [
    (None, "facts file not found"),
    ("", "no facts in file"),
    ("{oops\n", ":1: malformed JSON line"),
    ('{"relation": "country_capital", "subject": "France"}\n', ":1: a fact needs"),
    ('{"relation": "country_capital", "subject": "France", "answers": []}\n', ":1: a fact needs"),
    ('{"relation": "country_capital", "subject": "A", "answers": ["b"]}\n'
     '{"relation": "P9999", "subject": "France", "answers": ["x"]}\n', ":2: unknown relation 'P9999'"),
    ('{"relation": "P17", "subject": "A", "answers": ["b"], "split": "val"}\n', "unknown split 'val'"),
])
def test_facts_file_errors(tmp_path, text, expect):
    p = tmp_path / "facts.jsonl"
    if text is not None:
        p.write_text(text)
    assert expect in _one_line_error(load_facts_file, p)


def test_load_source_dispatch_errors():
    assert "needs data.path" in _one_line_error(load_source, "entityquestions")
    assert "needs data.path" in _one_line_error(load_source, "file")
    assert "unknown data source 'wiki'" in _one_line_error(load_source, "wiki")


# ------------------------------------------------------------------------------------------ records, splits
def test_fact_round_trip_and_key():
    f = Fact("P36", "France", ("Paris", "Paris, France"), "test", "in", "What is the capital of France?")
    d = f.to_dict()
    assert d["answers"] == ["Paris", "Paris, France"] and json.loads(json.dumps(d)) == d
    assert Fact.from_dict(d) == f
    assert f.key == "P36\tFrance\ttest"


def _facts(n_per_rel, rels=("P17", "P36"), split="train", domain="in"):
    return [Fact(r, f"s{i}", ("a",), split, domain, "q") for r in rels for i in range(n_per_rel)]


def test_subsample_per_relation_is_seeded_and_capped():
    facts = _facts(50)
    a = subsample_per_relation(facts, 10, seed=0)
    assert Counter(f.relation for f in a) == {"P17": 10, "P36": 10}
    assert a == subsample_per_relation(facts, 10, seed=0)
    assert a != subsample_per_relation(facts, 10, seed=1)
    assert [facts.index(f) for f in a] == sorted(facts.index(f) for f in a)      # original order kept
    assert subsample_per_relation(facts, None, seed=0) == facts
    assert subsample_per_relation(facts, 500, seed=0) == facts


def test_paper_splits():
    fs = FactSet(_facts(5, split="train") + _facts(5, split="test") + _facts(4, ("P106",), "test", "out")
                 + _facts(3, ("P106",), "train", "out") + _facts(2, split="dev"), "x", EQ)
    sets = paper_splits(fs)
    assert {k: len(v) for k, v in sets.items()} == {"train": 10, "test": 10, "testood": 4}
    assert all(f.split == "test" and f.domain == "out" for f in sets["testood"])
    capped = paper_splits(fs, {"train": 2, "testood": 1}, seed=3)
    assert {k: len(v) for k, v in capped.items()} == {"train": 4, "test": 10, "testood": 1}


# ------------------------------------------------------------------------------------------ built-in facts
def _digest(facts) -> str:
    return hashlib.sha256(json.dumps([f.to_dict() for f in facts]).encode()).hexdigest()


def test_builtin_facts():
    fs = load_source("builtin")
    assert fs.source == "builtin" and len(fs.facts) >= 5000
    rels = builtin_relations()
    counts = Counter(f.relation for f in fs.facts)
    assert set(counts) == set(rels)
    assert sum(rels[r].domain == "in" for r in counts) >= 4 and sum(rels[r].domain == "out" for r in counts) >= 2
    assert all(n >= 40 for n in counts.values()), counts
    assert len({(f.relation, f.subject) for f in fs.facts}) == len(fs.facts)        # no duplicate facts
    for f in fs.facts:
        rel = rels[f.relation]
        assert f.domain == rel.domain and f.answers and all(a and a == a.strip() for a in f.answers)
        assert f.subject == f.subject.strip() and f.question == rel.question(f.subject)
        assert rel.extract_subject(f.question) == f.subject                        # same as EntityQuestions
    known = {(f.relation, f.subject): f.answers for f in fs.facts}
    assert known[("country_capital", "France")] == ("Paris",)
    assert known[("country_continent", "Japan")] == ("Asia",)
    assert known[("city_country", "Tokyo")] == ("Japan",)
    assert known[("us_state_capital", "Texas")] == ("Austin",)
    assert "French" in known[("country_language", "France")]


def test_builtin_split_is_deterministic_and_proportioned():
    fs = load_builtin()
    in_dom = [f for f in fs.facts if f.domain == "in"]
    share = Counter(f.split for f in in_dom)
    assert set(share) == {"train", "dev", "test"}
    assert 0.65 < share["train"] / len(in_dom) < 0.75 and 0.07 < share["dev"] / len(in_dom) < 0.13
    assert {f.split for f in fs.facts if f.domain == "out"} == {"test"}      # only D_testood uses them
    # two builds from scratch are identical, in this process ...
    first = _digest(fs.facts)
    builtin_triples.cache_clear()
    assert _digest(load_builtin().facts) == first
    # ... and in a fresh interpreter with another hash seed (no dependence on set or dict order)
    code = ("import hashlib, json; from sftnb.data.builtin import load_builtin; "
            "print(hashlib.sha256(json.dumps([f.to_dict() for f in load_builtin().facts]).encode()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**__import__("os").environ, "PYTHONHASHSEED": "12345"}, timeout=120)
    assert out.stdout.strip() == first


def test_builtin_summary_table():
    table = summary_table(load_builtin()).set_index("relation")
    assert (table["unmatched"] == 0).all()
    assert (table.loc[table["domain"] == "out", ["train", "dev"]] == 0).all().all()
    assert table[["train", "dev", "test"]].to_numpy().sum() == len(load_builtin().facts)


# ------------------------------------------------------------------------------------------ the real dataset
def test_entityquestions_official_counts(shared_data):
    fs = load_entityquestions(shared_data)
    count = Counter((f.split, f.domain) for f in fs.facts)
    assert (count["train", "in"], count["train", "out"]) == (78611, 97949)
    assert (count["dev", "in"], count["dev", "out"]) == (9825, 12243)
    assert (count["test", "in"], count["test", "out"]) == (9828, 12247)
    assert {f.relation for f in fs.facts} == set(EQ) and len(EQ) == 24
    assert sum(fs.unmatched.values()) <= 10                   # near zero (0 for the official copy)
    assert all(f.subject and f.answers for f in fs.facts)
    totals = domain_totals(summary_table(fs))
    assert totals.loc["all", "relations"] == 24 and totals.loc["in", "relations"] == 10
