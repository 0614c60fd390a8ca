"""The records every fact loader returns (paper §3.1): a fact is a (subject, relation, answers) triple with the
question that asks for it, the split it comes from and its domain (in-domain location relations, or not).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

from .relations import Relation

SPLITS = ("train", "dev", "test")
CATEGORIES = (0, 1, 2, 3, 4)   # how well a model knows a fact: its mastery category (paper §3.3, sftnb.mastery)


@dataclass(frozen=True)
class Fact:
    relation: str
    subject: str
    answers: tuple[str, ...]
    split: str            # "train" | "dev" | "test"
    domain: str           # "in" | "out"
    question: str

    @property
    def key(self) -> str:
        """Stable identity of a fact within a data source (used to key probe results)."""
        return f"{self.relation}\t{self.subject}\t{self.split}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["answers"] = list(self.answers)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Fact":
        return cls(d["relation"], d["subject"], tuple(d["answers"]), d["split"], d["domain"], d["question"])


@dataclass
class FactSet:
    """Facts of one source plus the bookkeeping a loader must report."""
    facts: list[Fact]
    source: str
    relations: dict[str, Relation]
    unmatched: Counter = field(default_factory=Counter)   # (relation, split) -> questions that did not fit
    unmatched_examples: list[str] = field(default_factory=list)

    def select(self, split: str, domain: str) -> list[Fact]:
        return [f for f in self.facts if f.split == split and f.domain == domain]
