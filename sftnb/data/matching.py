"""Answer matching: is a gold answer (or one of its synonyms) contained in the model's output?

This is the paper's criterion for both the mastery probe (App. F.1: ``y ⊆ M(x)``) and closed-book QA
accuracy after SFT (§3.3), with the synonym table of App. F.1 / Table 12. Where the paper leaves details
open, the rules follow EntityQuestions' own matcher (``utils/has_answer_fn.py`` in princeton-nlp/EntityQuestions:
uncased token-sequence containment, where a token is a run of letters/digits or one punctuation character).

Normalisation (applied to answers and outputs alike, in this order):

1. Unicode NFKD, accents dropped (``Zürich`` -> ``zurich``), lower case, and the Latin letters NFKD leaves
   alone folded (``Łódź`` -> ``lodz``, ``Gießen`` -> ``giessen``, ``Bodø`` -> ``bodo``); the modifier letters
   that transliterations use inside words (okina, ayin, hamza: ``Molokaʻi``) are dropped, so
   ``Molokaʻi`` == ``Molokai``;
2. every character that is not a letter (of any script) or digit separates words, apostrophes included
   (``St. Petersburg`` -> ``st petersburg``, ``Bosnia-Herzegovina`` -> ``bosnia herzegovina``,
   ``Iran's`` -> ``iran s``, as EntityQuestions' tokenizer splits ``iran`` ``'`` ``s``). So a possessive
   contains its owner (``Iran's Kerman Province`` contains ``Iran``), and a gold written with an apostrophe
   (``People's Republic of China``) matches the same spelling, straight or typographic, in the output;
3. the articles ``a``, ``an``, ``the`` are removed as whole words (``normalize``; but see the article rule);
4. runs of white space collapse to one space.

Containment is on whole words: the normalised answer must appear in the normalised output delimited by
spaces or the text's ends. So ``Iran`` does not match ``Iranian`` and ``Paris`` does not match
``Parisian``, while ``New York`` matches ``New York City``: an answer inside a longer *word* is not a
match, an answer inside a longer *name* is (the paper's substring criterion, minus the accidental
sub-word hits).

Article rule: dropping articles must never let a gold that is ONE word after dropping them match a
different use of that word. A gold (or synonym) that is a single word once its articles are removed but
was written with one (``The Who``, ``The Game``, ``The Hague``) is matched with its articles, against the
output with its articles: ``The Hague`` is in ``It is in The Hague.`` but not in ``hague`` alone, and
``The Who`` is not in ``Pete Townshend, who wrote it``. That is what EntityQuestions' matcher does (it never
drops articles). Names of two or more words keep the lenient rule, articles ignored on both sides
(``Republic of the Congo`` matches ``Republic of Congo``, ``United States`` matches ``the United States``):
there a stray article cannot turn the name into an ordinary word. One-word answers written without an
article are matched as they are (``Paris`` in ``paris, france``).

Synonyms, and their direction. Aliases come only from ``resources/synonyms.json``, never from a fuzzy rule
(``UK`` does not match ``United Kingdom``). Its ``rows`` are the paper's Table 12 verbatim, printed as
Object -> Synonyms: "a synonym mapping table ... to expand the set of equivalent entity names", keyed by
the dataset's object names. They are applied ONE way, as printed: a gold answer equal to an object (after
normalisation, under the article rule above) also accepts that object's synonyms; a gold equal to a
synonym gains nothing. Reading the rows as equivalence classes would accept wrong answers, because some
rows are not equivalences: ``Harvard Law School -> Harvard University`` lets a model that answers
"Harvard University" be right about a Harvard Law School alumnus, but reversed it would let "Harvard Law
School" be right for a gold ``Harvard University``; likewise ``Indiana State House -> Indiana State``,
``Rio de Janeiro -> Rio de`` and ``University of Paris (1896-1968) -> Paris University``. Expansion is one
step (no chains through a synonym's own row).

The file's ``builtin_aliases`` are NOT the paper's: they are this package's rows, same format and
direction, for the GeoNames spellings the built-in facts (``builtin_facts.py``) use as gold answers and
that the paper's rows do not key (``United States`` -> ``USA``, ``U.S.``, ...; ``China`` -> ``PRC``, ...;
``Czechia``, ``Myanmar``, and ``The Netherlands`` -> ``Netherlands``, which the article rule would
otherwise require with its article). ``US`` is not an alias: lower-cased, it is the pronoun "us".
"""
from __future__ import annotations

import json
import re
import unicodedata
from functools import lru_cache
from importlib import resources
from typing import Iterable, Sequence

# Letters of any script are word characters (so "Москва" or "北京" survive normalisation); "_" is not.
# Apostrophes are not word characters either: "iran's" -> "iran s" (rule 2).
_NON_WORD = re.compile(r"[\W_]+")
_ARTICLES = frozenset({"a", "an", "the"})
# Latin letters that NFKD does not decompose, folded to their usual ASCII spelling ("Łódź" -> "lodz",
# "Gießen" -> "giessen", "Bodø" -> "bodo"). The modifier letters okina, apostrophe, ayin and hamza are
# letters to Unicode (so "\w" would keep them inside a word): they are dropped, so that "Molokaʻi" and
# "Molokai" agree. Punctuation apostrophes (' ’ ‘) need no entry: rule 2 turns them into spaces.
_FOLD = str.maketrans({"ß": "ss", "ø": "o", "ł": "l", "đ": "d", "ð": "d", "þ": "th", "æ": "ae", "œ": "oe",
                       "ı": "i", "ħ": "h", "\u02bb": None, "\u02bc": None, "\u02bf": None, "\u02be": None})


@lru_cache(maxsize=200_000)
def _forms(text: str) -> tuple[str, str]:
    """(words with articles, words without articles), each normalised and joined by single spaces."""
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower().translate(_FOLD)
    words = _NON_WORD.sub(" ", text).split()
    return " ".join(words), " ".join(w for w in words if w not in _ARTICLES)


def normalize(text: str) -> str:
    """Normalised text (rules 1-4 of the module docstring): lower case, no accents/punctuation/articles."""
    return _forms(text)[1]


def _match_form(name: str) -> tuple[str, bool]:
    """How ``name`` is looked for: (normalised words, whether to match with articles kept).

    Articles are kept only for a name that is one word without them but was written with one
    ("The Hague" -> ("the hague", True)); every other name is matched without articles.
    """
    full, bare = _forms(name)
    if bare and " " not in bare and full != bare:
        return full, True
    return bare, False


def _key(name: str) -> str:
    """Lookup key of a name in the synonym table: its match form, so that "The Game" and "Game" differ."""
    return _match_form(name)[0]


def _load_table() -> dict:
    return json.loads(resources.files("sftnb.resources").joinpath("synonyms.json").read_text(encoding="utf-8"))


@lru_cache(maxsize=None)
def synonym_table() -> dict[str, tuple[str, ...]]:
    """Object key -> its synonyms (original spelling): the paper's Table 12 rows, then the built-in aliases.

    One way: keyed by the object only (see the module docstring). A key is the object's normalised form
    under the article rule; rows with the same key (none today) would have their synonyms merged in order.
    """
    raw = _load_table()
    table: dict[str, tuple[str, ...]] = {}
    for row in raw["rows"] + raw["builtin_aliases"]:
        k = _key(row["object"])
        table[k] = tuple(dict.fromkeys(table.get(k, ()) + tuple(row["synonyms"])))
    return table


def expand_answers(answers: Iterable[str]) -> tuple[str, ...]:
    """Gold answers plus the synonyms of those that are table objects, original spelling, de-duplicated in order."""
    out: dict[str, None] = {}
    table = synonym_table()
    for a in answers:
        out[a] = None
        for s in table.get(_key(a), ()):
            out[s] = None
    return tuple(out)


@lru_cache(maxsize=200_000)
def _needles(answers: tuple[str, ...]) -> tuple[tuple[str, bool], ...]:
    """The answers' aliases as (" padded words ", with articles?) pairs, shortest first; empty ones dropped."""
    forms = {_match_form(a) for a in expand_answers(answers)}
    return tuple((f" {form} ", kept) for form, kept in sorted(forms, key=lambda f: (len(f[0]), f)) if form)


def _padded(text: str) -> tuple[str, str]:
    """The text's two forms padded with a space each side, so whole-word containment is one ``in``.

    Not cached itself: ``_forms`` is, and padding is cheap next to a second cache of every output."""
    full, bare = _forms(text)
    return f" {full} ", f" {bare} "


def answer_in_text(answers: Sequence[str], text: str) -> bool:
    """True if any gold answer or synonym occurs in ``text`` as whole words (normalisation and article rule)."""
    needles = _needles(tuple(answers))
    if not needles:
        return False
    full, bare = _padded(text)
    return any(n in (full if kept else bare) for n, kept in needles)


def answer_position(answers: Sequence[str], text: str) -> int | None:
    """Word index, in ``normalize(text)``, where the earliest matching alias starts (None if absent).

    Same rules as ``answer_in_text``. A match made with its article ("the hague") is placed at its first
    word that is not an article, since articles are not in the normalised text.
    Used by the token-level analysis (§4.1) to keep completions whose answer appears near the beginning.
    """
    needles = _needles(tuple(answers))
    if not needles:
        return None
    full, bare = _padded(text)
    best = None
    for n, kept in needles:
        hay = full if kept else bare
        at = hay.find(n)
        if at < 0:
            continue
        # The needle's leading space is the separator before its first word: the spaces before it (the
        # padding included) count the words before the match.
        before = hay[1:at + 1].split()
        pos = sum(w not in _ARTICLES for w in before) if kept else len(before)
        best = pos if best is None else min(best, pos)
    return best
