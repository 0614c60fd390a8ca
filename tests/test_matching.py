"""Answer matching (issue 2, item 7): the paper's containment criterion with Table 12's synonyms.

Decisions tested here (documented in sftnb/matching.py):
* aliases come only from the paper's Table 12 (USA / United States / United States of America ...); names the
  table does not list (UK / United Kingdom) are not aliases;
* containment is on whole words: an answer inside a longer *word* ("Iran" in "Tirana", "Georgia" in
  "Georgian") is not a match, an answer inside a longer *name* ("New York" in "New York City") is;
* case, punctuation, accents (also the Latin letters NFKD leaves alone: Ł, ß, ø), the articles a/an/the and
  white space do not matter.
"""
import json
from importlib import resources

import pytest

from sftnb.matching import answer_in_text, answer_position, expand_answers, normalize, synonym_classes


# ------------------------------------------------------------------------------------------ normalize
@pytest.mark.parametrize("text,norm", [
    ("Zürich", "zurich"),
    ("São Paulo", "sao paulo"),
    ("St. Petersburg", "st petersburg"),
    ("Bosnia-Herzegovina", "bosnia herzegovina"),
    ("People's Republic", "peoples republic"),
    ("People\u2019s Republic", "peoples republic"),                 # typographic apostrophe
    ("The Hague", "hague"),
    ("A Coruña", "coruna"),
    ("Republic of the Congo", "republic of congo"),
    ("  New\n\tYork  ", "new york"),
    ("Łódź Voivodeship", "lodz voivodeship"),
    ("Gießen", "giessen"),
    ("Tromsø", "tromso"),
    ("Æthelbald", "aethelbald"),
    ("Molokaʻi", "molokai"),
    ("Москва", "москва"),                                            # other scripts are kept, not erased
    ("Theatre", "theatre"),                                          # only whole-word articles go
    ("snake_case", "snake case"),
    ("?!", ""),
])
def test_normalize(text, norm):
    assert normalize(text) == norm


# ------------------------------------------------------------------------------------------ synonyms
def test_synonym_table_is_table_12():
    raw = json.loads(resources.files("sftnb.resources").joinpath("synonyms.json").read_text(encoding="utf-8"))
    classes = raw["classes"]
    assert len(classes) == 29
    assert classes[0] == ["United States of America", "USA", "United States"]
    assert ["United Arab Emirates", "UAE", "The Emirates"] in classes
    index = synonym_classes()
    for cls in classes:                                    # every member expands to its whole class
        for name in cls:
            assert set(cls) <= set(index[normalize(name)])


@pytest.mark.parametrize("gold,text", [
    ("United States of America", "It is in the USA, I think"),
    ("United States of America", "the United States"),
    ("USA", "United States of America"),
    ("usa", "the united states of america"),             # lookup is normalised too
    ("People's Republic of China", "China"),
    ("China", "The PRC"),
    ("United Arab Emirates", "Dubai is in the UAE"),
    ("Saint Petersburg", "St. Petersburg, Russia"),
    ("New York City", "born in New York"),
    ("Bosnia and Herzegovina", "Bosnia"),
])
def test_table_12_aliases_match(gold, text):
    assert answer_in_text([gold], text) is True


@pytest.mark.parametrize("gold,text", [
    ("United Kingdom", "the UK"),                         # not in Table 12: no fuzzy alias
    ("UK", "United Kingdom"),
    ("Germany", "Deutschland"),
    ("New York", "York"),                                 # part of a name is not the name
    ("United States", "U.S.A."),                          # "u s a" is not the alias "usa": no guessing
])
def test_names_outside_table_12_are_not_aliases(gold, text):
    assert answer_in_text([gold], text) is False


def test_expand_answers():
    got = expand_answers(["United States of America"])
    assert got[0] == "United States of America"           # the gold answer first, then its class
    assert set(got) == {"United States of America", "USA", "United States"}
    assert expand_answers(["USA"])[0] == "USA" and set(expand_answers(["USA"])) == set(got)
    assert expand_answers(["Painblanc"]) == ("Painblanc",)
    assert expand_answers(["France", "France"]) == ("France",)
    assert set(expand_answers(["Korea", "Paris"])) == {"Korea", "South Korea", "Republic of Korea", "Paris"}
    assert expand_answers([]) == ()


# ------------------------------------------------------------------------------------------ containment
@pytest.mark.parametrize("answers,text", [
    (["Iran"], "Tirana is a city"),                       # inside a longer word
    (["Iran"], "an Iranian poet"),
    (["Georgia"], "a Georgian poet"),
    (["Paris"], "Parisian cafes"),
    (["Oman"], "Romania"),
    (["India"], "Indiana"),
    (["Mali"], "Somalia"),
    (["Rome"], "Romeo"),
])
def test_answer_inside_a_longer_word_does_not_match(answers, text):
    assert answer_in_text(answers, text) is False


@pytest.mark.parametrize("answers,text", [
    (["Georgia"], "Tbilisi, Georgia."),
    (["Georgia"], "Georgia (country)"),
    (["Iran"], "Tehran is the capital of Iran"),
    (["York"], "New York City"),                          # inside a longer *name*: a match
    (["Paris"], "Paris-Saclay"),                          # hyphen separates words
])
def test_answer_as_whole_words_matches(answers, text):
    assert answer_in_text(answers, text) is True


@pytest.mark.parametrize("answers,text,hit", [
    (["France"], "Paris is in FRANCE!!!", True),                     # case, punctuation
    (["France"], "france", True),
    (["São Paulo"], "He was born in Sao Paulo, Brazil", True),       # accents, both directions
    (["Sao Paulo"], "São Paulo", True),
    (["Zürich"], "ZURICH", True),
    (["Łódź"], "Lodz, Poland", True),
    (["Gießen"], "Giessen", True),
    (["Bodø"], "Bodo", True),
    (["Bodø"], "Bod", False),                                        # ø is folded to o, not erased
    (["Москва"], "Столица — Москва.", True),
    (["the Netherlands"], "Amsterdam, Netherlands", True),           # articles
    (["Netherlands"], "The Netherlands", True),
    (["Republic of the Congo"], "republic of congo", True),
    (["The Hague"], "hague", True),
    (["People's Republic of China"], "Peoples Republic of China", True),   # apostrophes
    (["People\u2019s Republic of China"], "People's Republic of China", True),
    (["Guinea-Bissau"], "Guinea Bissau", True),
    (["Guinea-Bissau"], "Guinea", False),
    (["New York"], "New\n   York", True),                           # white space
    (["Buenos Aires"], "Buenos is", False),                          # multi-word: every word ...
    (["Buenos Aires"], "Aires Buenos", False),                       # ... in order ...
    (["Buenos Aires"], "Buenos big Aires", False),                   # ... and adjacent
    (["Buenos Aires"], "BUENOS AIRES, Argentina", True),
    (["English", "French"], "They speak French there", True),        # any gold answer
    (["Paris"], "", False),
    ([], "Paris", False),
    (["The"], "The end", False),                                     # answers that normalise to nothing
    (["?"], "? ? ?", False),
])
def test_answer_in_text(answers, text, hit):
    assert answer_in_text(answers, text) is hit


# ------------------------------------------------------------------------------------------ position
@pytest.mark.parametrize("answers,text,pos", [
    (["France"], "France, of course", 0),
    (["France"], "It is in France", 3),
    (["France"], "It is in the France", 3),                          # index over normalised words
    (["France"], "no idea", None),
    (["Paris"], "Parisian or Paris", 2),                             # sub-word hits are skipped
    (["United States of America"], "Born in the USA", 2),             # aliases count
    (["United States of America"], "I think USA, United States", 2),  # earliest of several aliases
    (["New York City"], "New York City", 0),
    (["Buenos Aires"], "in Buenos Aires", 1),
    (["Paris"], "", None),
])
def test_answer_position(answers, text, pos):
    assert answer_position(answers, text) == pos


@pytest.mark.parametrize("answers,text", [
    (["France"], "It is in France"), (["Iran"], "Tirana"), (["USA"], "United States"), (["The"], "the"),
    (["Buenos Aires"], "Aires Buenos"), (["Łódź"], "Lodz"),
])
def test_position_agrees_with_containment(answers, text):
    assert (answer_position(answers, text) is not None) == answer_in_text(answers, text)
