"""Answer matching: is a gold answer (or one of its synonyms) contained in the model's output?

This is the paper's criterion for both the mastery probe (App. F.1: ``y ⊆ M(x)``) and closed-book QA
accuracy after SFT (§3.3), with the synonym table of App. F.1 / Table 12.

Normalisation (applied to answers and outputs alike, in this order):

1. Unicode NFKD, accents dropped (``Zürich`` -> ``zurich``), lower case, and the Latin letters NFKD leaves
   alone folded (``Łódź`` -> ``lodz``, ``Gießen`` -> ``giessen``, ``Bodø`` -> ``bodo``);
2. typographic apostrophes folded to ``'``; every other character that is not a letter (of any script) or
   digit becomes a space (``St. Petersburg`` -> ``st petersburg``, ``Bosnia-Herzegovina`` -> ``bosnia herzegovina``),
   apostrophes are removed (``People's`` -> ``peoples``);
3. the articles ``a``, ``an``, ``the`` are removed as whole words;
4. runs of white space collapse to one space.

Containment is on whole words: the normalised answer must appear in the normalised output delimited by
spaces or the text's ends. So ``Iran`` does not match ``Iranian`` and ``Paris`` does not match
``Parisian``, while ``New York`` matches ``New York City``: an answer inside a longer *word* is not a
match, an answer inside a longer *name* is (the paper's substring criterion, minus the accidental
sub-word hits). Aliases come only from the synonym table: ``USA`` matches ``United States of America``
because Table 12 says so, not through any fuzzy rule.
"""
from __future__ import annotations

import json
import re
import unicodedata
from functools import lru_cache
from importlib import resources
from typing import Iterable, Sequence

# Letters of any script are word characters (so "Москва" or "北京" survive normalisation); "_" is not.
_NON_WORD = re.compile(r"[^\w']+|_+")
_ARTICLES = {"a", "an", "the"}
# Latin letters that NFKD does not decompose, folded to their usual ASCII spelling ("Łódź" -> "lodz",
# "Gießen" -> "giessen", "Bodø" -> "bodo"), and apostrophe-like marks folded to "'" ("Molokaʻi" -> "molokai").
_FOLD = str.maketrans({"ß": "ss", "ø": "o", "ł": "l", "đ": "d", "ð": "d", "þ": "th", "æ": "ae", "œ": "oe",
                       "ı": "i", "ħ": "h", "\u2019": "'", "\u2018": "'", "`": "'", "\u02bb": "'",
                       "\u02bc": "'", "\u02bf": "'", "\u02be": "'"})


@lru_cache(maxsize=200_000)
def normalize(text: str) -> str:
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower().translate(_FOLD)
    text = _NON_WORD.sub(" ", text).replace("'", "")
    return " ".join(w for w in text.split() if w not in _ARTICLES)


@lru_cache(maxsize=None)
def synonym_classes() -> dict[str, tuple[str, ...]]:
    """Normalised name -> every name of its Table 12 equivalence class."""
    raw = json.loads(resources.files("sftnb.resources").joinpath("synonyms.json").read_text(encoding="utf-8"))
    index: dict[str, tuple[str, ...]] = {}
    for cls in raw["classes"]:
        for name in cls:
            index.setdefault(normalize(name), ())
            index[normalize(name)] = tuple(dict.fromkeys(index[normalize(name)] + tuple(cls)))
    return index


def expand_answers(answers: Iterable[str]) -> tuple[str, ...]:
    """Gold answers plus their synonyms (Table 12), original spelling, de-duplicated in order."""
    out: dict[str, None] = {}
    classes = synonym_classes()
    for a in answers:
        out[a] = None
        for s in classes.get(normalize(a), ()):
            out[s] = None
    return tuple(out)


@lru_cache(maxsize=200_000)
def _normalized_aliases(answers: tuple[str, ...]) -> tuple[str, ...]:
    aliases = {normalize(a) for a in expand_answers(answers)}
    aliases.discard("")
    return tuple(sorted(aliases, key=len))


def answer_in_text(answers: Sequence[str], text: str) -> bool:
    """True if any gold answer or synonym occurs in ``text`` as whole words (after normalisation)."""
    aliases = _normalized_aliases(tuple(answers))
    if not aliases:
        return False
    padded = f" {normalize(text)} "
    return any(f" {a} " in padded for a in aliases)


def answer_position(answers: Sequence[str], text: str) -> int | None:
    """Word index where the first matching alias starts in the normalised text (None if absent).

    Used by the token-level analysis (§4.1) to keep completions whose answer appears near the beginning.
    """
    aliases = _normalized_aliases(tuple(answers))
    words = normalize(text).split()
    best = None
    for a in aliases:
        aw = a.split()
        for i in range(len(words) - len(aw) + 1):
            if words[i:i + len(aw)] == aw:
                best = i if best is None else min(best, i)
                break
    return best
