"""Relations: the question template and the mapping templates of each fact type (paper App. F.2).

A relation turns a subject into two kinds of text:

* a *question* (``Which country is {subject} located in?``), used for SFT and closed-book QA testing;
* *mapping templates* (``{subject} is located in``), sentence prefixes that a pre-trained model completes.
  The mastery probe (App. F.1) samples completions of all of them to measure how well a fact is known.

EntityQuestions' 24 relations are transcribed from the paper's Tables 13-36 into
``resources/entityquestions_relations.json``; the built-in facts' relations (written for this package, in
the same style) live in ``resources/builtin_relations.json``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

# The 10 location relations of the paper (in-domain: D_train and D_test); the other 14 are D_testood.
IN_DOMAIN_EQ = ("P17", "P19", "P20", "P36", "P69", "P131", "P159", "P276", "P495", "P740")


@dataclass(frozen=True)
class Relation:
    id: str                           # "P17"; built-in relations use descriptive ids ("country_capital")
    domain: str                       # "in" (location relations) or "out"
    question_template: str            # contains "{subject}" once
    mapping_templates: tuple[str, ...]
    source: str                       # "entityquestions" or "builtin"

    def question(self, subject: str) -> str:
        return self.question_template.replace("{subject}", subject)

    def mapping(self, template_index: int, subject: str) -> str:
        return self.mapping_templates[template_index].replace("{subject}", subject)

    @property
    def _question_regex(self) -> re.Pattern:
        return _template_regex(self.question_template)

    def extract_subject(self, question: str) -> str | None:
        """Recover the subject from a question built with this relation's template (None if it does not fit)."""
        m = self._question_regex.fullmatch(question.strip())
        return m.group("subject").strip() if m else None


@lru_cache(maxsize=None)
def _template_regex(template: str) -> re.Pattern:
    before, after = template.split("{subject}")
    # Greedy subject: "Who is X's child?" must keep apostrophes inside X ("Shlomo Zalman Auerbach").
    return re.compile(re.escape(before) + r"(?P<subject>.+)" + re.escape(after), re.DOTALL)


def _load_relations(resource: str, source: str) -> dict[str, Relation]:
    raw = json.loads(resources.files("sftnb.resources").joinpath(resource).read_text(encoding="utf-8"))
    rels = {}
    for r in raw["relations"]:
        rel = Relation(
            id=r["id"], domain=r["domain"], question_template=r["question_template"],
            mapping_templates=tuple(r["mapping_templates"]), source=source,
        )
        if rel.question_template.count("{subject}") != 1:
            raise ValueError(f"{resource}: question template of {rel.id} must contain {{subject}} once")
        if not all("{subject}" in t for t in rel.mapping_templates):
            raise ValueError(f"{resource}: a mapping template of {rel.id} lacks {{subject}}")
        rels[rel.id] = rel
    return rels


@lru_cache(maxsize=None)
def entityquestions_relations() -> dict[str, Relation]:
    """The paper's 24 EntityQuestions relations, keyed by Wikidata property id."""
    return _load_relations("entityquestions_relations.json", "entityquestions")


@lru_cache(maxsize=None)
def builtin_relations() -> dict[str, Relation]:
    """Relations of the embedded built-in facts (sftnb.data.builtin)."""
    return _load_relations("builtin_relations.json", "builtin")


def relations_for(source: str) -> dict[str, Relation]:
    if source == "entityquestions":
        return entityquestions_relations()
    if source == "builtin":
        return builtin_relations()
    raise ValueError(f"unknown data source {source!r} (expected 'entityquestions' or 'builtin')")


def all_relations() -> dict[str, Relation]:
    return {**entityquestions_relations(), **builtin_relations()}
