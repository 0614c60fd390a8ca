"""The calibrated mastery estimator (issue 17): monotone, deterministic, no fact calibrates itself, and answers after
a lead-in token are scored as sampling scores them."""
import math

import numpy as np
import pandas as pd
import pytest

from sftnb.calibration import (Calibration, compare, cross_fitted, fit, fit_alpha, study_facts, transform)
from sftnb.data.facts import Fact
from sftnb.mastery import category


def test_transform_is_monotone_and_keeps_the_ends():
    p = np.linspace(0, 1, 101)
    for alpha in (0.05, 0.5, 1.0, 2.0, 40.0):
        q = transform(p, alpha)
        assert (np.diff(q) >= 0).all() and q[0] == 0 and q[-1] == 1
    assert np.allclose(transform(p, 1.0), p)


def test_fit_alpha_matches_the_sampled_mean_and_is_deterministic():
    rng = np.random.default_rng(0)
    p = rng.uniform(0, 0.3, 400)
    target = transform(p, 2.5)
    a = fit_alpha(p, target)
    assert a == pytest.approx(2.5, rel=1e-6) and fit_alpha(p, target) == a
    assert transform(p, a).mean() == pytest.approx(target.mean(), abs=1e-9)
    assert fit_alpha(np.zeros(10), np.full(10, 0.5)) == pytest.approx(math.exp(8))   # no root: the bound


def _frame(keys, rel, rates, n_samples=10):
    rows = []
    for k, r in zip(keys, rates):
        m = float(np.mean(r))
        rows.append({"key": k, "relation": rel, "template_rates": list(r), "R": m, "category": category(min(1, m))})
    return pd.DataFrame(rows)


def test_calibration_applies_per_relation_on_the_sampling_grid():
    lik = pd.concat([_frame(["a", "b"], "r1", [[0.1, 0.2], [0.0, 0.0]]), _frame(["c"], "r2", [[0.5, 0.5]])])
    cal = Calibration({"r1": 2.0})
    out = cal.apply(lik, n_samples=10)
    assert out.loc[out["key"] == "a", "template_rates"].iloc[0] == pytest.approx([0.19, 0.36])
    r_a = out.loc[out["key"] == "a", "R"].iloc[0]
    assert r_a * 20 == round(r_a * 20)                                  # on the 2 x 10 sampling grid
    assert out.loc[out["key"] == "b", "category"].iloc[0] == 0          # p = 0 stays category 0
    assert out.loc[out["key"] == "c", "R"].iloc[0] == 0.5               # no alpha: unchanged


def test_cross_fitting_never_uses_a_facts_own_samples():
    keys = [f"k{i}" for i in range(10)]
    lik = _frame(keys, "r", [[0.1, 0.1]] * 10)
    sampled = _frame(keys, "r", [[0.2, 0.2]] * 10)
    base = cross_fitted(lik, sampled, n_samples=10, folds=5)
    changed = sampled.copy()
    changed.loc[changed["key"] == "k0", "template_rates"] = pd.Series([[1.0, 1.0]], index=changed.index[:1])
    again = cross_fitted(lik, changed, n_samples=10, folds=5)
    r0 = lambda df: df.loc[df["key"] == "k0", "R"].iloc[0]          # noqa: E731
    assert r0(again) == r0(base)                                       # k0's own sample changed: its estimate not
    assert not again.set_index("key")["R"].equals(base.set_index("key")["R"])   # the others' did


def test_fit_reads_the_relations_of_the_facts_probed_both_ways():
    lik = pd.concat([_frame(["a", "b"], "r1", [[0.1], [0.2]]), _frame(["c"], "r2", [[0.3]])])
    sampled = pd.concat([_frame(["a", "b"], "r1", [[0.2], [0.4]])])
    cal = fit(lik, sampled)
    assert set(cal.alpha) == {"r1"} and cal.pairs["r1"] == 2 and cal.alpha["r1"] > 1


def test_study_facts_spread_over_relations():
    facts = [Fact(r, f"s{i}", ("a",), "train", "in", "") for r in ("x", "y", "z") for i in range(30)]
    picked = study_facts([facts[:45], facts[45:]], 12, seed=3)
    assert len(picked) == 12 and {f.relation for f in picked} == {"x", "y", "z"}
    assert [f.key for f in study_facts([facts], 12, seed=3)] == [f.key for f in study_facts([facts], 12, 3)]


def test_compare_reports_agreement_and_mean_r():
    a = _frame(list("abcdef"), "r", [[0.0], [0.1], [0.3], [0.6], [0.9], [0.2]])
    b = _frame(list("abcdef"), "r", [[0.0], [0.1], [0.35], [0.6], [0.8], [0.0]])
    row = compare(a, b, "x")
    assert row["facts"] == 6 and row["same category"] == pytest.approx(5 / 6)
    assert -1 <= row["rho"] <= 1 and row["mean R (first)"] == pytest.approx(a["R"].mean())


def test_lead_in_phrases_are_a_beam_of_disjoint_events_with_their_exact_probabilities():
    """Depth 3 keeps depth 1's lead-ins first; every phrase's probability is the product of its tempered next-token
    probabilities, the probabilities after it are those of the watched tokens, and no phrase holds a watched or
    excluded token (so the events "phrase, then a watched token" are disjoint: their sum stays <= 1)."""
    from sftnb.lm.models import load_model
    from sftnb.lm.scoring import continuation_logprobs, lead_in_probs

    model, tok = load_model("tiny-random")
    prompts = [tok.encode(t, add_special_tokens=False) for t in (" Zorbville is located in", " Mimbleton is in the")]
    watch = [[5, 17], [40]]
    kw = dict(temperature=0.7, exclude=[3, 9], batch_tokens=64)
    one = lead_in_probs(model, prompts, watch, 4, **kw)
    three = lead_in_probs(model, prompts, watch, 4, depth=3, **kw)
    assert three == lead_in_probs(model, prompts, watch, 4, depth=3, **kw)           # deterministic
    for pi, (a, b) in enumerate(zip(one, three)):
        assert len(a["leads"]) == 4 and len(b["leads"]) == 12
        assert b["start"] == pytest.approx(a["start"])
        assert [ph for ph, _ in b["leads"][:4]] == [ph for ph, _ in a["leads"]]
        assert [p for _, p in b["leads"][:4]] == pytest.approx([p for _, p in a["leads"]])
        assert np.allclose(b["after"][:4], a["after"], atol=1e-6)
        phrases = [list(ph) for ph, _ in b["leads"]]
        assert [len(ph) for ph in phrases] == [1] * 4 + [2] * 4 + [3] * 4
        assert not any(t in watch[pi] or t in (3, 9) for ph in phrases for t in ph)
        exact = continuation_logprobs(model, [prompts[pi]], [phrases], temperature=0.7)[0]
        assert [p for _, p in b["leads"]] == pytest.approx([math.exp(x) for x in exact], rel=1e-4)
        for (ph, p), row in zip(b["leads"], b["after"]):
            then = continuation_logprobs(model, [prompts[pi]], [[list(ph) + [w] for w in watch[pi]]],
                                         temperature=0.7)[0]
            assert [p * r for r in row] == pytest.approx([math.exp(x) for x in then], rel=1e-4, abs=1e-12)
        total = sum(b["start"]) + sum(p * sum(row) for (_, p), row in zip(b["leads"], b["after"]))
        assert total <= 1 + 1e-6


@pytest.mark.slow
@pytest.mark.parametrize("lead, depth", [(" the", 1), (" the land", 3)])
def test_an_answer_after_a_lead_in_is_scored_as_sampling_scores_it(lead, depth):
    """A tiny model taught "X is located in<lead> Y." completes the probe "X is located in" with "<lead> Y": the answer
    is never the first token, so the start-only likelihood misses it, while the lead-in likelihood (phrases of up
    to ``depth`` tokens: " the town of" is 4 tokens here, the answer's own first piece the last) and sampling
    agree."""
    from sftnb.config import InjectConfig, ProbeConfig, SFTConfig
    from sftnb.inject import Exposure, exposure_schedule, inject_model, train_config
    from sftnb.mastery import probe
    from sftnb.lm.models import load_model
    from sftnb.data.relations import builtin_relations

    rels = builtin_relations()
    facts = [Fact("city_country", s, (c,), "train", "in", "") for s, c in (("Zorbville", "Qatar"),
                                                                           ("Mimbleton", "Chile"))]
    model, tok = load_model("tiny-random")
    statements = exposure_schedule([Exposure(f, 128) for f in facts],
                                   {"city_country": ["{subject} is located in" + lead + " {answer}."]}, seed=0)
    inject_model(model, tok, statements, train_config(SFTConfig(), InjectConfig(learning_rate=1e-2, batch_size=4)),
                 seed=0, progress=False)
    cfg = ProbeConfig(n_templates=1, n_samples=20, max_new_tokens=12, lead_ins=4, lead_in_depth=depth)
    sampled = probe(model, tok, facts, rels, cfg, "sampling", progress=False)
    lead_in = probe(model, tok, facts, rels, cfg, "likelihood", progress=False)
    start = probe(model, tok, facts, rels, cfg.model_copy(update={"lead_ins": 0}), "likelihood", progress=False)
    assert (sampled["R"] > 0.6).all()
    assert (start["R"] < 0.1).all()
    assert (abs(lead_in["R"] - sampled["R"]) < 0.25).all()
    if depth > 1:       # the same phrase is out of reach of one-token lead-ins
        short = probe(model, tok, facts, rels, cfg.model_copy(update={"lead_in_depth": 1}), "likelihood",
                      progress=False)
        assert (short["R"] < 0.1).all()
