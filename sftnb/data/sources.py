"""Closed-book QA facts: the loaders (paper §3.1). Their records, ``Fact`` and ``FactSet``, are in ``sftnb.data.facts``.

Sources:

* ``entityquestions``: the official EntityQuestions layout ``{train,dev,test}/P<id>.<split>.json`` (or
  ``.jsonl``) at any path. The subject is recovered from each question through its relation's question
  template; a question that does not fit is counted and reported (``FactSet.unmatched``), never silently
  dropped.
* ``builtin``: real-world facts built offline from data shipped by PyPI packages (``sftnb.data.builtin``).
* a JSONL facts file (``relation``, ``subject``, ``answers``; optional ``split``): ``load_facts_file``.

Downstream the paper's datasets are: D_train = in-domain train, D_test = in-domain test,
D_testood = out-of-domain test (``paper_splits``).
"""
from __future__ import annotations

import json
import random
import warnings
from collections import Counter
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..infra.errors import SftnbError
from .facts import SPLITS, Fact, FactSet
from .relations import all_relations, relations_for

# --------------------------------------------------------------------------------------------- loaders
def _read_records(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SftnbError(f"{path}: not UTF-8 text ({e.reason})") from None
    except OSError as e:              # a folder named like a data file, no permission, ...
        raise SftnbError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        if path.suffix == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text)
    except json.JSONDecodeError as e:
        raise SftnbError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise SftnbError(f"{path}: expected a list of {{\"question\", \"answers\"}} objects")
    for i, r in enumerate(records):
        if not isinstance(r.get("question"), str) or not isinstance(r.get("answers"), list) or not r["answers"]:
            raise SftnbError(f"{path}: record {i} needs a 'question' string and a non-empty 'answers' list")
    return records


def load_entityquestions(path: str | Path, splits: Sequence[str] = SPLITS,
                         relations: Sequence[str] | None = None) -> FactSet:
    """Load the official EntityQuestions layout from ``path`` (see module docstring)."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise SftnbError(f"EntityQuestions path not found or not a directory: {root}")
    known = relations_for("entityquestions")
    wanted = set(relations) if relations is not None else None
    unknown_wanted = (wanted or set()) - set(known)
    if unknown_wanted:
        raise SftnbError(f"unknown EntityQuestions relation(s): {', '.join(sorted(unknown_wanted))}")
    facts: list[Fact] = []
    unmatched: Counter = Counter()
    examples: list[str] = []
    n_files = 0
    for split in splits:
        if split not in SPLITS:
            raise SftnbError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        files = sorted(list(split_dir.glob(f"*.{split}.json")) + list(split_dir.glob(f"*.{split}.jsonl")))
        for fp in files:
            rel_id = fp.name.split(".")[0]
            if rel_id not in known:
                raise SftnbError(f"{fp}: unknown relation id {rel_id!r} (known: {', '.join(known)})")
            if wanted is not None and rel_id not in wanted:
                continue
            rel = known[rel_id]
            n_files += 1
            for rec in _read_records(fp):
                subject = rel.extract_subject(rec["question"])
                if subject is None:
                    unmatched[(rel_id, split)] += 1
                    if len(examples) < 10:
                        examples.append(f"{fp.name}: {rec['question']}")
                    continue
                facts.append(Fact(rel_id, subject, tuple(str(a) for a in rec["answers"]), split,
                                  rel.domain, rec["question"]))
    if n_files == 0:
        raise SftnbError(f"{root}: no EntityQuestions files ({{train,dev,test}}/P<id>.<split>.json) found")
    if unmatched:
        warnings.warn(f"{sum(unmatched.values())} EntityQuestions questions did not fit their relation's "
                      f"question template and were not loaded (e.g. {examples[0]!r}); see FactSet.unmatched")
    return FactSet(facts, "entityquestions", known, unmatched, examples)


def load_facts_file(path: str | Path, default_split: str = "test") -> FactSet:
    """A JSONL file of facts: ``{"relation": "P36", "subject": "France", "answers": ["Paris"]}`` per line.

    The relation must be a known one (EntityQuestions or built-in); ``split`` defaults to ``default_split``.
    """
    fp = Path(path).expanduser()
    if not fp.is_file():
        raise SftnbError(f"facts file not found: {fp}")
    rels = all_relations()
    facts = []
    try:
        lines = fp.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise SftnbError(f"{fp}: not UTF-8 text") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError as e:
            raise SftnbError(f"{fp}:{n}: malformed JSON line ({e.msg})") from None
        if not isinstance(d, dict) or not isinstance(d.get("subject"), str) or not isinstance(d.get("relation"), str) \
                or not isinstance(d.get("answers"), list) or not d["answers"]:
            raise SftnbError(f"{fp}:{n}: a fact needs 'relation' and 'subject' strings and a non-empty 'answers' list")
        if d["relation"] not in rels:
            raise SftnbError(f"{fp}:{n}: unknown relation {d['relation']!r}")
        rel = rels[d["relation"]]
        split = d.get("split", default_split)
        if split not in SPLITS:
            raise SftnbError(f"{fp}:{n}: unknown split {split!r}")
        facts.append(Fact(rel.id, d["subject"], tuple(map(str, d["answers"])), split, rel.domain,
                          rel.question(d["subject"])))
    if not facts:
        raise SftnbError(f"{fp}: no facts in file")
    return FactSet(facts, "file", {r: rels[r] for r in {f.relation for f in facts}})


def facts_from_spec(spec: str) -> list[Fact]:
    """The command line's facts argument: ``builtin[:split]``, ``entityquestions:PATH[:split]`` or a JSONL facts
    file."""
    if spec == "builtin" or spec.startswith("builtin:"):
        split = spec.split(":", 1)[1] if ":" in spec else None
        fs = load_source("builtin")
    elif spec.startswith("entityquestions:"):
        rest = spec.split(":", 1)[1]
        path, split = rest, None
        if rest.rsplit(":", 1)[-1] in SPLITS:
            path, split = rest.rsplit(":", 1)
        fs = load_source("entityquestions", path)
    else:
        fs, split = load_facts_file(spec), None
    if split and split not in SPLITS:
        raise SftnbError(f"unknown split {split!r} (train, dev or test)")
    return [f for f in fs.facts if not split or f.split == split]


def load_source(source: str, path: str | Path | None = None) -> FactSet:
    """Dispatch on the params' ``data.source``."""
    if source == "entityquestions":
        if path is None:
            raise SftnbError("data.source 'entityquestions' needs data.path (the dataset's folder)")
        return load_entityquestions(path)
    if source == "builtin":
        from .builtin import load_builtin
        return load_builtin()
    if source == "file":
        if path is None:
            raise SftnbError("data.source 'file' needs data.path (a JSONL facts file)")
        return load_facts_file(path)
    raise SftnbError(f"unknown data source {source!r} (expected entityquestions, builtin or file)")


# ------------------------------------------------------------------------------------------ the paper's sets
def subsample_per_relation(facts: Sequence[Fact], per_relation: int | None, seed: int) -> list[Fact]:
    """At most ``per_relation`` facts of each relation, a seeded random subset, original order kept."""
    if per_relation is None:
        return list(facts)
    by_rel: dict[str, list[int]] = {}
    for i, f in enumerate(facts):
        by_rel.setdefault(f.relation, []).append(i)
    keep: set[int] = set()
    for rel in sorted(by_rel):
        idx = by_rel[rel]
        rng = random.Random(f"{seed}:{rel}")
        keep.update(idx if len(idx) <= per_relation else rng.sample(idx, per_relation))
    return [f for i, f in enumerate(facts) if i in keep]


def paper_splits(factset: FactSet, max_per_relation: dict[str, int | None] | None = None,
                 seed: int = 0) -> dict[str, list[Fact]]:
    """D_train (in-domain train), D_test (in-domain test), D_testood (out-of-domain test), §3.1.

    ``max_per_relation`` caps each set per relation (a seeded subset) for reduced-scale runs.
    """
    caps = max_per_relation or {}
    sets = {
        "train": factset.select("train", "in"),
        "test": factset.select("test", "in"),
        "testood": factset.select("test", "out"),
    }
    return {name: subsample_per_relation(fs, caps.get(name), seed) for name, fs in sets.items()}


# ------------------------------------------------------------------------------------------------ summary
def summary_table(factset: FactSet) -> pd.DataFrame:
    """Facts per relation x split (columns) with domain and the unmatched-question count."""
    rows = []
    counts = Counter((f.relation, f.split) for f in factset.facts)
    rel_ids = sorted({r for r, _ in counts} | {r for r, _ in factset.unmatched},
                     key=lambda r: (factset.relations[r].domain != "in", r))
    for rel in rel_ids:
        row = {"relation": rel, "domain": factset.relations[rel].domain}
        for split in SPLITS:
            row[split] = counts.get((rel, split), 0)
        row["unmatched"] = sum(v for (r, _), v in factset.unmatched.items() if r == rel)
        rows.append(row)
    df = pd.DataFrame(rows, columns=["relation", "domain", *SPLITS, "unmatched"])
    return df


def domain_totals(table: pd.DataFrame) -> pd.DataFrame:
    """Totals of ``summary_table`` per domain (rows: in, out, all)."""
    cols = [*SPLITS, "unmatched"]
    tot = table.groupby("domain")[cols].sum()
    tot.loc["all"] = tot.sum()
    tot["relations"] = table.groupby("domain").size().reindex(tot.index).fillna(len(table)).astype(int)
    return tot


def source_summary(source: str, path: str | Path | None = None) -> tuple[FactSet, pd.DataFrame, pd.DataFrame]:
    """``sftnb data summary``: a data source loaded, its ``summary_table`` and the table's ``domain_totals``."""
    fs = load_source(source, path)
    table = summary_table(fs)
    return fs, table, domain_totals(table)

