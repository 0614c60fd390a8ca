"""Further tasks for Table 5: fine-tune on a task, restore the most-changed parameters, score the task.

Table 5 of Ye et al. fine-tunes LLaMA-3-8B on XSum (one-sentence news summaries) and on GSM8K (grade-school
math), restores the k = 0, 1, 3, 5, 10, 20, 40, 60 % most-changed parameters and scores each restored model
(ROUGE-1/2/L for XSum, accuracy for GSM8K). This module supplies the tasks and their metrics:

* real data from local files (``load_task_files``): nothing is downloaded at run time;
* two offline built-in tasks for the CPU main run (``builtin_math_task``, ``builtin_summary_task``), made
  deterministically from a seed, the facts that ``sftnb.builtin_facts`` ships and the wording in
  ``resources/builtin_task_templates.json``.

Metrics (per example; callers average or bootstrap over examples):

* ``rouge``: ROUGE-1/2/L F1 from Google's ``rouge-score`` package with ``use_stemmer=True`` (Porter stemmer on
  tokens longer than 3 characters; text lower-cased, non-alphanumeric characters treated as spaces), the
  setting the XSum literature reports. ``rougeL`` is sentence-level LCS, not ``rougeLsum``: XSum summaries are
  one sentence, where the two coincide.
* ``gsm8k``: accuracy. The reference is the number after ``####`` in the answer text, commas removed, as
  GSM8K's own grader (``extract_answer`` in openai/grade-school-math) reads it; the prediction is the last
  number in the generation. Both are normalised alike ("$1,234.00" -> "1234", "+7" -> "7", "-3" kept).

Prompts (the SFT question; ``sftnb.sft`` wraps it as ``<|question|> {prompt} <|answer|>``), from
``format_prompt``: rouge -> ``"Summarize in one sentence: {document}"``; gsm8k -> the question as is (GSM8K
questions are self-contained). Targets are the reference text; for GSM8K the full answer, reasoning and
``#### N`` included, since that is what the model is fine-tuned to write.

Files are JSON Lines (any suffix but ``.parquet``/``.pq``) or Parquet, as ``datasets`` writes them. On a
machine with internet::

    from datasets import load_dataset
    xsum = load_dataset("EdinburghNLP/xsum")            # fields: document, summary, id
    gsm = load_dataset("openai/gsm8k", "main")          # fields: question, answer
    for s in ("train", "test"): xsum[s].to_json(f"xsum_{s}.jsonl"); gsm[s].to_parquet(f"gsm8k_{s}.parquet")
"""
from __future__ import annotations

import importlib.util
import itertools
import json
import random
import re
import warnings
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

from .errors import SftnbError


@dataclass(frozen=True)
class Example:
    prompt: str
    target: str


@dataclass
class Task:
    name: str
    metric: str                 # a key of METRICS
    train: list[Example]
    test: list[Example]
    max_new_tokens: int
    source: str                 # "builtin:math", "builtin:summary" or the test file's path


# --------------------------------------------------------------------------------------------- metrics
@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer
    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def _check_lengths(predictions: Sequence, references: Sequence) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")


def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
    """Per-example ROUGE-1, ROUGE-2 and ROUGE-L F1 (fmeasure, 0..1) of each prediction against its reference.

    ``rouge_score.rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)``: lower-cased,
    non-alphanumerics as spaces, Porter-stemmed ("running" ~ "run"), as the XSum literature reports.
    ``rougeL`` is sentence-level LCS over the whole text, not ``rougeLsum`` (LCS per newline-split sentence):
    with one-sentence XSum summaries the two are the same number. An empty prediction scores 0."""
    _check_lengths(predictions, references)
    scorer = _rouge_scorer()
    out: dict[str, list[float]] = {"rouge1": [], "rouge2": [], "rougeL": []}
    for pred, ref in zip(predictions, references):
        s = scorer.score(ref, pred)                  # rouge-score's order: (target, prediction)
        for key in out:
            out[key].append(float(s[key].fmeasure))
    return out


# A number: optional sign (a "-" directly after a word or digit is a minus, not a sign: "10-3"), an optional
# "$", digits with thousands commas, an optional decimal part. A trailing "." (end of sentence) is not taken.
_NUMBER_RE = re.compile(r"(?:(?<![\w.])[-+])?\$?\d[\d,]*(?:\.\d+)?")
_ANSWER_RE = re.compile(r"#### (\-?[0-9\.\,]+)")     # openai/grade-school-math, grade_school_math/dataset.py


def _canonical_number(text: str) -> str:
    """'$1,234.00' -> '1234', '+7' -> '7', '7.50' -> '7.5', '007' -> '7', '-0' -> '0': one spelling per value."""
    s = text.strip().replace(",", "").replace("$", "").rstrip(".")
    sign = "-" if s.startswith("-") else ""
    s = s.lstrip("+-")
    whole, _, frac = s.partition(".")
    whole, frac = whole.lstrip("0") or "0", frac.rstrip("0")
    s = f"{whole}.{frac}" if frac else whole
    return "0" if s == "0" else sign + s


def gsm8k_reference(answer_text: str) -> str:
    """The reference number of a GSM8K answer: what follows "#### ", commas removed (GSM8K's ``extract_answer``),
    then normalised like predictions. A bare number ("18") is taken as is; anything else is an SftnbError."""
    m = _ANSWER_RE.search(answer_text)
    if m:
        return _canonical_number(m.group(1))
    if _NUMBER_RE.fullmatch(answer_text.strip()):
        return _canonical_number(answer_text)
    raise SftnbError(f"GSM8K answer has no '#### N' line: {answer_text[-60:]!r}")


def gsm8k_prediction(generation: str) -> str | None:
    """The last number in a generation, normalised ("so she has $1,234.00." -> "1234"); None when it has none."""
    numbers = _NUMBER_RE.findall(generation)
    return _canonical_number(numbers[-1]) if numbers else None


def gsm8k_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
    """Per-example accuracy: 1.0 when the generation's last number equals the reference answer (full GSM8K
    answer text, or a bare number), both normalised; a generation without a number scores 0."""
    _check_lengths(predictions, references)
    return {"accuracy": [float(gsm8k_prediction(p) == gsm8k_reference(r)) for p, r in zip(predictions, references)]}


METRICS: dict[str, Callable[[Sequence[str], Sequence[str]], dict[str, list[float]]]] = {
    "rouge": rouge_scores, "gsm8k": gsm8k_scores}
_COLUMNS = {"rouge": ["rouge1", "rouge2", "rougeL"], "gsm8k": ["accuracy"]}


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise SftnbError(f"unknown task metric {metric!r} (known: {', '.join(METRICS)})")
    return metric


def score(metric: str, predictions: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
    """Per-example scores of ``metric`` ("rouge" | "gsm8k"), keyed by ``metric_columns(metric)``."""
    return METRICS[_check_metric(metric)](predictions, references)


def metric_columns(metric: str) -> list[str]:
    """The score names ``score(metric, ...)`` returns, in report order."""
    return list(_COLUMNS[_check_metric(metric)])


def format_prompt(metric: str, text: str) -> str:
    """The prompt the model sees: an instruction for summaries; a GSM8K question needs none."""
    _check_metric(metric)
    return f"Summarize in one sentence: {text}" if metric == "rouge" else text


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
    _check_metric(metric)
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


# --------------------------------------------------------------------------------------------- built-in tasks
@lru_cache(maxsize=1)
def _templates() -> dict:
    """The built-in tasks' wording (``resources/builtin_task_templates.json``)."""
    text = resources.files("sftnb.resources").joinpath("builtin_task_templates.json").read_text(encoding="utf-8")
    return json.loads(text)


def _check_sizes(n_train: int, n_test: int) -> None:
    if n_train < 1 or n_test < 1:
        raise SftnbError(f"built-in task sizes must be at least 1 (n_train={n_train}, n_test={n_test})")


def _distinct(make: Callable[[random.Random], object], text: Callable[[object], str], n: int,
              rng: random.Random, seen: set[str]) -> list:
    """n items whose text is new to ``seen`` (and added to it): no text repeats, within or across splits."""
    items: list = []
    for _ in range(50 * n + 100):                 # bounded: a tiny space must fail, not loop forever
        item = make(rng)
        if text(item) not in seen:
            seen.add(text(item))
            items.append(item)
        if len(items) == n:
            return items
    raise SftnbError(f"cannot generate {n} distinct built-in examples; ask for fewer")


@dataclass(frozen=True)
class MathProblem:
    """The generator's structured record: the answer is ``start`` folded through ``steps`` ((op, operand))."""
    name: str
    obj: str
    start: int
    steps: tuple[tuple[str, int], ...]
    question: str
    solution: str


def _math_steps(rng: random.Random) -> tuple[int, list[tuple[str, int]], list[str]]:
    """A start value and 1-3 operations that keep every value a small non-negative integer (below 100):
    subtract at most what there is, multiply (by 2 or 3) only values from 1 to 20."""
    value = start = rng.randint(2, 20)
    steps, lines = [], []
    for _ in range(rng.randint(1, 3)):
        op = rng.choice(["+"] + (["-"] if value > 0 else []) + (["*"] if 0 < value <= 20 else []))
        b = rng.randint(2, 3) if op == "*" else rng.randint(1, 15) if op == "+" else rng.randint(1, value)
        new = value + b if op == "+" else value - b if op == "-" else value * b
        steps.append((op, b))
        lines.append(f"{value} {op} {b} = {new}.")
        value = new
    return start, steps, lines + [f"#### {value}"]


def _math_problem(rng: random.Random) -> MathProblem:
    t = _templates()["math"]
    name, s = rng.choice(t["people"])
    obj = rng.choice(t["objects"])
    start, steps, lines = _math_steps(rng)
    fill = {"N": name, "S": s.capitalize(), "s": s, "o": obj}
    sentences = [rng.choice(t["start"]).format(a=start, **fill)]
    sentences += [rng.choice(t[op]).format(b=b, **fill) for op, b in steps]
    sentences.append(rng.choice(t["question"]).format(**fill))
    return MathProblem(name, obj, start, tuple(steps), " ".join(sentences), " ".join(lines))


def math_problems(n_train: int, n_test: int, seed: int = 0) -> tuple[list[MathProblem], list[MathProblem]]:
    """(train, test) structured problems, no question in both; test drawn first, so it doesn't depend on n_train."""
    rng, seen = random.Random(f"math:{seed}"), set()
    test = _distinct(_math_problem, lambda p: p.question, n_test, rng, seen)
    return _distinct(_math_problem, lambda p: p.question, n_train, rng, seen), test


def builtin_math_task(n_train: int = 400, n_test: int = 100, seed: int = 0, max_new_tokens: int = 48) -> Task:
    """One- to three-step word problems (+, -, x by 2-3; values 0..99) answered GSM8K-style:
    "Mia has 4 apples. She buys 3 more. How many apples does Mia have now?" -> "4 + 3 = 7. #### 7"."""
    _check_sizes(n_train, n_test)
    train, test = math_problems(n_train, n_test, seed)
    as_examples = lambda ps: [Example(format_prompt("gsm8k", p.question), p.solution) for p in ps]  # noqa: E731
    return Task("math", "gsm8k", as_examples(train), as_examples(test), max_new_tokens, "builtin:math")


@lru_cache(maxsize=1)
def _countries() -> tuple[dict, ...]:
    """Countries with a capital, continent and currency (what the summary states), with their languages and
    cities other than the capital, sorted by name."""
    from .builtin_facts import builtin_triples
    info: dict[str, dict] = {}
    cities: dict[str, list[str]] = {}
    for rel, subject, answers in builtin_triples():
        if rel == "city_country":
            cities.setdefault(answers[0], []).append(subject)
        elif rel.startswith("country_"):
            info.setdefault(subject, {})[rel.removeprefix("country_")] = answers
    return tuple({"name": n, "capital": d["capital"][0], "continent": d["continent"][0],
                  "currency": d["currency"][0], "languages": d.get("language", ()),
                  "cities": tuple(sorted(c for c in cities.get(n, []) if c != d["capital"][0]))}
                 for n, d in sorted(info.items()) if {"capital", "continent", "currency"} <= d.keys())


def _passage(country: dict, rng: random.Random) -> str:
    """3-5 sentences in a shuffled order: capital, continent and currency always (the summary states them),
    then the languages (at most two) and one or two cities where the facts have them."""
    facts = [("capital", country["capital"]), ("continent", country["continent"]), ("currency", country["currency"])]
    if country["languages"]:
        facts.append(("language", " and ".join(country["languages"][:2])))
    n_cities = min(len(country["cities"]), 5 - len(facts), rng.randint(1, 2))
    facts += [("city", c) for c in rng.sample(country["cities"], n_cities)]
    rng.shuffle(facts)
    t = _templates()["summary"]
    return " ".join(rng.choice(t[kind]).format(c=country["name"], x=x) for kind, x in facts)


def _summary(country: dict) -> str:
    return _templates()["summary"]["pattern"].format(c=country["name"], **country)


def builtin_summary_task(n_train: int = 200, n_test: int = 40, seed: int = 0, max_new_tokens: int = 48) -> Task:
    """Passages about countries, each with a one-sentence reference summary in a fixed pattern ("Japan, a country
    in Asia, has its capital in Tokyo and uses the Yen."). Test and train countries are disjoint; when n_train
    exceeds the train countries, a country recurs with another wording and order (texts stay distinct)."""
    _check_sizes(n_train, n_test)
    countries = list(_countries())
    rng = random.Random(f"summary:{seed}")
    rng.shuffle(countries)
    if n_test >= len(countries):
        raise SftnbError(f"built-in summary task: n_test must be below {len(countries)} (the countries)")
    pool = itertools.cycle(countries[n_test:])            # every train country once before any recurs
    test = [(c, _passage(c, rng)) for c in countries[:n_test]]
    train = _distinct(lambda r: (lambda c: (c, _passage(c, r)))(next(pool)), lambda cp: cp[1], n_train, rng, set())
    as_examples = lambda items: [Example(format_prompt("rouge", p), _summary(c)) for c, p in items]  # noqa: E731
    return Task("summary", "rouge", as_examples(train), as_examples(test), max_new_tokens, "builtin:summary")


# --------------------------------------------------------------------------------------------- dispatch
BUILTIN_KINDS = {"math": (builtin_math_task, "gsm8k"), "summary": (builtin_summary_task, "rouge")}
SPEC_KEYS = ("name", "source", "kind", "train_path", "test_path", "metric", "prompt_field", "target_field",
             "max_train", "max_test", "seed", "max_new_tokens")


def builtin_task(kind: str, n_train: int | None = None, n_test: int | None = None, seed: int = 0,
                 max_new_tokens: int | None = None) -> Task:
    """``builtin_math_task`` or ``builtin_summary_task`` by name ("math" | "summary"); None = its default."""
    if kind not in BUILTIN_KINDS:
        raise SftnbError(f"unknown built-in task kind {kind!r} (known: {', '.join(BUILTIN_KINDS)})")
    given = {"n_train": n_train, "n_test": n_test, "max_new_tokens": max_new_tokens}
    return BUILTIN_KINDS[kind][0](seed=seed, **{k: v for k, v in given.items() if v is not None})


def load_task(spec: dict, root: Path | None = None) -> Task:
    """A task from a plain dict with the keys ``SPEC_KEYS`` (absent or None = default):

    * ``source: "builtin"``: ``kind`` "math" | "summary"; ``max_train`` / ``max_test`` are the generated sizes
      (default: the generator's); ``metric``, when given, must be the kind's (gsm8k / rouge).
    * ``source: "files"``: ``train_path``, ``test_path`` and ``metric`` required (relative paths resolve
      against ``root`` when given); fields default per metric (``DEFAULT_FIELDS``: XSum, GSM8K).
    """
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise SftnbError(f"task spec: unknown key(s) {', '.join(unknown)} (known: {', '.join(SPEC_KEYS)})")
    spec = {k: v for k, v in spec.items() if v is not None}        # None = default, as a pydantic dump gives
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise SftnbError("task spec: 'name' is required")
    if spec.get("source") == "builtin":
        return _builtin_from_spec(name, spec)
    if spec.get("source") == "files":
        return _files_from_spec(name, spec, root)
    raise SftnbError(f"task {name!r}: unknown source {spec.get('source')!r} (known: builtin, files)")


def _builtin_from_spec(name: str, spec: dict) -> Task:
    kind = spec.get("kind")
    if kind not in BUILTIN_KINDS:
        raise SftnbError(f"task {name!r}: kind must be one of {', '.join(BUILTIN_KINDS)}, got {kind!r}")
    wanted, own = spec.get("metric"), BUILTIN_KINDS[kind][1]
    if wanted not in (None, own):
        raise SftnbError(f"task {name!r}: built-in {kind} is scored with {own!r}, not {wanted!r}")
    task = builtin_task(kind, spec.get("max_train"), spec.get("max_test"), spec.get("seed", 0),
                        spec.get("max_new_tokens"))
    task.name = name
    return task


def _files_from_spec(name: str, spec: dict, root: Path | None) -> Task:
    missing = [k for k in ("train_path", "test_path", "metric") if k not in spec]
    if missing:
        raise SftnbError(f"task {name!r}: source 'files' needs {', '.join(missing)}")
    metric = _check_metric(spec["metric"])
    paths = [Path(spec[k]).expanduser() for k in ("train_path", "test_path")]
    paths = [p if p.is_absolute() or root is None else Path(root) / p for p in paths]
    prompt_field, target_field = DEFAULT_FIELDS[metric]
    return load_task_files(name, paths[0], paths[1], metric, spec.get("prompt_field", prompt_field),
                           spec.get("target_field", target_field), spec.get("max_train"), spec.get("max_test"),
                           spec.get("seed", 0), spec.get("max_new_tokens"))
