"""Table 5's task data: what a task is (``Example``, ``Task``) and the real data from local files
(``load_task_files``): nothing is downloaded at run time.

Files are JSON Lines (any suffix but ``.parquet``/``.pq``) or Parquet, as ``datasets`` writes them. On a
machine with internet::

    from datasets import load_dataset
    xsum = load_dataset("EdinburghNLP/xsum")            # fields: document, summary, id
    gsm = load_dataset("openai/gsm8k", "main")          # fields: question, answer
    for s in ("train", "test"): xsum[s].to_json(f"xsum_{s}.jsonl"); gsm[s].to_parquet(f"gsm8k_{s}.parquet")
"""
from __future__ import annotations

import importlib.util
import json
import random
import warnings
from dataclasses import dataclass
from pathlib import Path

from ..infra.errors import SftnbError
from .task_metrics import check_metric, format_prompt, gsm8k_reference


@dataclass(frozen=True)
class Example:
    prompt: str
    target: str


@dataclass
class Task:
    name: str
    metric: str                 # a key of task_scoring.METRICS
    train: list[Example]
    test: list[Example]
    max_new_tokens: int
    source: str                 # "builtin:math", "builtin:summary" or the test file's path


# --------------------------------------------------------------------------------------------- files
DEFAULT_FIELDS = {"rouge": ("document", "summary"), "gsm8k": ("question", "answer")}   # XSum, GSM8K
DEFAULT_MAX_NEW_TOKENS = {"rouge": 64, "gsm8k": 256}      # one news sentence; GSM8K's worked solutions


def _jsonl_records(path: Path) -> list[tuple[str, object]]:
    """(location, record) per non-blank line of a JSON Lines file."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SftnbError(f"{path}: not UTF-8 text ({e.reason})") from None
    except OSError as e:
        raise SftnbError(f"{path}: cannot read ({e.strerror or e})") from None
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append((f"line {n}", json.loads(line)))
        except json.JSONDecodeError as e:
            raise SftnbError(f"{path}: line {n} is not JSON ({e.msg})") from None
    return records


def _parquet_records(path: Path) -> list[tuple[str, object]]:
    """(location, record) per row of a Parquet file."""
    if importlib.util.find_spec("pyarrow") is None:
        raise SftnbError(f"{path}: reading Parquet needs pyarrow: pip install 'pyarrow>=14'")
    import pandas as pd
    try:
        frame = pd.read_parquet(path, engine="pyarrow")
    except Exception as e:          # pyarrow raises ArrowInvalid, OSError, ... on a damaged or foreign file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise SftnbError(f"{path}: not a readable Parquet file ({first})") from None
    return [(f"row {i}", rec) for i, rec in enumerate(frame.to_dict("records"))]


def _field(rec: dict, name: str, where: str) -> str:
    if name not in rec:
        raise SftnbError(f"{where}: no field {name!r} (fields: {', '.join(map(str, rec)) or 'none'})")
    if not isinstance(rec[name], str):
        raise SftnbError(f"{where}: field {name!r} is not text ({type(rec[name]).__name__})")
    return rec[name]


def _read_examples(path: Path, metric: str, prompt_field: str, target_field: str) -> list[Example]:
    """Examples of one file; a record with an empty prompt or target is skipped with a warning (real exports
    have a few), anything malformed is an SftnbError naming file, line/row and field."""
    if not path.is_file():
        raise SftnbError(f"task file not found: {path}")
    parquet = path.suffix.lower() in (".parquet", ".pq")
    records = _parquet_records(path) if parquet else _jsonl_records(path)
    examples, empty = [], []
    for where, rec in records:
        where = f"{path}: {where}"
        if not isinstance(rec, dict):
            raise SftnbError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        prompt, target = _field(rec, prompt_field, where), _field(rec, target_field, where)
        if not prompt.strip() or not target.strip():
            empty.append(where)
            continue
        if metric == "gsm8k":
            try:
                gsm8k_reference(target)      # fail at load time, not after fine-tuning
            except SftnbError as e:
                raise SftnbError(f"{where}: field {target_field!r}: {e}") from None
        examples.append(Example(format_prompt(metric, prompt.strip()), target.strip()))
    if empty:
        warnings.warn(f"{path}: skipped {len(empty)} record(s) with an empty {prompt_field!r} or "
                      f"{target_field!r} (first: {empty[0]})", stacklevel=3)
    return examples


def _subsample(items: list, k: int | None, rng: random.Random) -> list:
    """At most k items, chosen by ``rng``, kept in file order."""
    if k is None or k >= len(items):
        return items
    return [items[i] for i in sorted(rng.sample(range(len(items)), k))]


def load_task_files(name: str, train_path: str | Path, test_path: str | Path, metric: str,
                    prompt_field: str, target_field: str, max_train: int | None = None,
                    max_test: int | None = None, seed: int = 0, max_new_tokens: int | None = None) -> Task:
    """A task from a train and a test file (JSONL or Parquet; see the module docstring). ``max_train`` /
    ``max_test`` keep a seeded random subset (independent streams: one cap never changes the other's subset);
    ``max_new_tokens`` defaults per metric (``DEFAULT_MAX_NEW_TOKENS``). Reads only; writes nothing."""
    check_metric(metric)
    for what, cap in (("max_train", max_train), ("max_test", max_test), ("max_new_tokens", max_new_tokens)):
        if cap is not None and cap < 1:
            raise SftnbError(f"task {name!r}: {what} must be at least 1, got {cap}")
    train_path, test_path = Path(train_path).expanduser(), Path(test_path).expanduser()
    train = _read_examples(train_path, metric, prompt_field, target_field)
    test = _read_examples(test_path, metric, prompt_field, target_field)
    for path, examples in ((train_path, train), (test_path, test)):
        if not examples:
            raise SftnbError(f"{path}: no examples (task {name!r} needs a non-empty train and test set)")
    train = _subsample(train, max_train, random.Random(f"{seed}:train"))
    test = _subsample(test, max_test, random.Random(f"{seed}:test"))
    return Task(name, metric, train, test, max_new_tokens or DEFAULT_MAX_NEW_TOKENS[metric], str(test_path))
