"""Two offline built-in tasks for Table 5 on the CPU main run (``builtin_math_task``, ``builtin_summary_task``),
made deterministically from a seed, the facts that ``sftnb.data.builtin`` ships and the wording in
``resources/builtin_task_templates.json``.
"""
from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Callable

from ..infra.errors import SftnbError
from .tasks import Example, Task
from .task_metrics import format_prompt


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
    from .builtin import builtin_triples
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
