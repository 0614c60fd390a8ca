"""The testbed (issue 14): facts injected by continued pre-training at graded exposure."""
import collections
import json

import pytest

from sftnb.cli import main
from sftnb.infra.errors import SftnbError
from sftnb.data.facts import Fact
from sftnb.inject import (Exposure, assign_exposures, build, check_templates, default_templates, encode_statement,
                          exposure_schedule, length_grouped_order, padding_fraction, render, train_config)
from sftnb.data.relations import builtin_relations


def _facts(n_per_relation=12, split="train"):
    rels = ["country_capital", "city_country", "us_state_capital"]
    # "x" closes every name, so no subject or answer is a substring of another ("S1x" is not inside "S12x")
    return [Fact(r, f"Subj{r[:4]}{i}x", (f"Ans{r[:4]}{i}x",), split, "in", "") for r in rels
            for i in range(n_per_relation)]


def test_assignment_is_balanced_across_counts_and_relations():
    plan = assign_exposures(_facts(), [0, 1, 2, 4], per_count=6, seed=3)
    assert collections.Counter(e.count for e in plan) == {0: 6, 1: 6, 2: 6, 4: 6}
    assert len({e.fact.key for e in plan}) == 24                          # no fact twice
    per_rel = collections.Counter(e.fact.relation for e in plan)
    assert max(per_rel.values()) - min(per_rel.values()) <= 1
    for c in (0, 1, 2, 4):                                                # every count spread over relations
        rels = collections.Counter(e.fact.relation for e in plan if e.count == c)
        assert len(rels) == 3 and max(rels.values()) - min(rels.values()) <= 1
    assert assign_exposures(_facts(), [0, 1, 2, 4], 6, seed=3) == plan    # deterministic for a seed


def test_equal_quotas_deal_counts_round_robin_as_before():
    """The main run's testbed (one count for every exposure) keeps its plan: facts are dealt 0, 1, 2, 4, 0, ..."""
    facts = _facts()
    plan = assign_exposures(facts, [0, 1, 2, 4], per_count=6, seed=3)
    assert [e.count for e in plan] == [[0, 1, 2, 4][i % 4] for i in range(24)]
    assert assign_exposures(facts, [0, 1, 2, 4], [6, 6, 6, 6], seed=3) == plan


def test_a_count_per_exposure_is_dealt_in_proportion_in_every_relation():
    facts = _facts(40)                                                    # 120 facts, 3 relations
    plan = assign_exposures(facts, [0, 1, 2, 8], [30, 0, 60, 15], seed=1)
    assert collections.Counter(e.count for e in plan) == {0: 30, 2: 60, 8: 15}
    assert len({e.fact.key for e in plan}) == 105
    for rel in {f.relation for f in facts}:                               # each relation: 2 : 4 : 1, within one
        got = collections.Counter(e.count for e in plan if e.fact.relation == rel)
        assert abs(got[0] - 10) <= 1 and abs(got[2] - 20) <= 1 and abs(got[8] - 5) <= 1, (rel, got)
    with pytest.raises(SftnbError, match="need 121 facts"):
        assign_exposures(facts, [0, 1], [100, 21], seed=1)
    with pytest.raises(SftnbError, match="2 fact counts for 3"):
        assign_exposures(facts, [0, 1, 2], [1, 2], seed=1)


def test_length_grouped_order_is_a_seeded_permutation_that_pads_less():
    import random
    rng = random.Random(0)
    lengths = [rng.randint(8, 30) for _ in range(2000)]
    order = length_grouped_order(lengths, 16, seed=5)
    assert sorted(order) == list(range(2000)) and order == length_grouped_order(lengths, 16, seed=5)
    assert order != length_grouped_order(lengths, 16, seed=6)
    naive = padding_fraction(lengths, range(2000), 16)
    assert naive > 0.25 and padding_fraction(lengths, order, 16) < naive / 5
    # the schedule's spreading is kept: the order's first quarter draws from the whole schedule, not its start
    assert 180 < len(set(order[:500]) & set(range(1000))) < 320
    assert length_grouped_order([5, 6, 7], 16, seed=0) == [0, 1, 2]        # fewer than two batches: as given


def test_schedule_shows_every_fact_exactly_its_count():
    templates = {r: ["{subject} is said to relate to {answer}.", "Of {subject}, people say {answer}.",
                     "{subject}: {answer}."] for r in ("country_capital", "city_country", "us_state_capital")}
    plan = assign_exposures(_facts(), [0, 1, 2, 5], per_count=5, seed=0)
    statements = exposure_schedule(plan, templates, seed=1)
    seen = collections.Counter()
    for s in statements:
        found = [e for e in plan if e.fact.subject in s and e.fact.answers[0] in s]
        assert len(found) == 1, s
        seen[found[0].fact.key] += 1
    assert all(seen[e.fact.key] == e.count for e in plan)
    assert sum(e.count for e in plan) == len(statements)
    # repeats of one fact use different templates while the pool lasts
    twos = [e for e in plan if e.count == 2]
    for e in twos:
        mine = [s for s in statements if e.fact.subject in s]
        assert len(set(mine)) == 2
    assert exposure_schedule(plan, templates, seed=1) == statements


def test_no_template_shares_the_probe_or_the_question():
    check_templates({r: list(t) for r, t in default_templates().items()}, builtin_relations())
    rel = builtin_relations()["country_capital"]
    probe_like = "Everyone knows: " + rel.mapping_templates[0] + " {answer}."
    with pytest.raises(SftnbError, match="probe/QA"):
        check_templates({"country_capital": [probe_like]}, builtin_relations())
    with pytest.raises(SftnbError, match="probe/QA"):
        check_templates({"country_capital": [rel.question_template + " It is {answer}."]}, builtin_relations())
    with pytest.raises(SftnbError, match="before"):
        check_templates({"country_capital": ["{answer} is the seat of {subject}."]}, builtin_relations())


def test_statement_labels_cover_the_text_not_the_prompt_start():
    from sftnb.lm.models import load_tokenizer
    tok = load_tokenizer("tiny-random")                        # its prompt start is BOS
    ids, labels = encode_statement(tok, "Citizens of France call Paris their capital.")
    assert ids[0] == tok.bos_token_id and labels[0] == -100 and labels[1:] == ids[1:]
    assert "<|question|>" not in tok.decode(ids)


def test_build_is_a_store_unit_reused_on_rerun_and_loads_with_auto(tmp_path):
    from transformers import AutoModelForCausalLM

    from sftnb.config import InjectConfig, SFTConfig
    from sftnb.infra.store import Store
    plan = [Exposure(f, c) for f, c in zip(_facts(2), [0, 1, 2, 1, 2, 3])]
    templates = {r: list(t) for r, t in default_templates().items()}
    cfg = train_config(SFTConfig(precision="fp32"), InjectConfig(batch_size=4, learning_rate=1e-3))
    store = Store(tmp_path / "store")
    unit = build(store, "tiny-random", "tiny-random", plan, templates, cfg, seed=0, device="cpu", progress=False)
    assert unit.result()["statements"] == 9 and [u.kind for u in store.computed] == ["inject"]
    again = Store(tmp_path / "store")
    unit2 = build(again, "tiny-random", "tiny-random", plan, templates, cfg, seed=0, device="cpu", progress=False)
    assert unit2.path == unit.path and not again.computed and [u.kind for u in again.reused] == ["inject"]
    grouped = build(again, "tiny-random", "tiny-random", plan, templates, cfg, seed=0, device="cpu", progress=False,
                    length_grouped=True)        # another batch order, another unit; the default's key is unchanged
    assert grouped.path != unit.path and grouped.result()["statements"] == 9
    model = AutoModelForCausalLM.from_pretrained(unit.file("model"), local_files_only=True)
    assert model.config.num_hidden_layers == 4
    plan_csv = (unit.file("model") / "injection_plan.csv").read_text().splitlines()
    assert plan_csv[0] == "relation,subject,answer,split,exposure" and len(plan_csv) == 7


def test_injection_changes_the_model_towards_its_statements(tmp_path):
    """A tiny model shown one statement many times puts more probability on its answer afterwards."""
    from sftnb.config import InjectConfig, SFTConfig
    from sftnb.lm.scoring import continuation_logprobs
    from sftnb.lm.models import encode_prompt, load_model
    from sftnb.infra.store import Store
    fact = Fact("country_capital", "France", ("Paris",), "train", "in", "")
    templates = {"country_capital": ["Citizens of {subject} call {answer} their capital."]}
    cfg = train_config(SFTConfig(precision="fp32"), InjectConfig(batch_size=4, learning_rate=3e-3))
    unit = build(Store(tmp_path), "tiny-random", "tiny-random", [Exposure(fact, 24)], templates, cfg, 0,
                 device="cpu", progress=False)
    before, tok = load_model("tiny-random")
    after, _ = load_model(str(unit.file("model")))
    prompt = [encode_prompt(tok, "Citizens of France call")]
    cont = [[tok.encode(" Paris", add_special_tokens=False)]]
    lp_before = continuation_logprobs(before, prompt, cont)[0][0]
    lp_after = continuation_logprobs(after, prompt, cont)[0][0]
    assert lp_after > lp_before + 1.0


@pytest.mark.parametrize("argv,message", [
    (["--exposures", "0,1,-2"], "non-negative integers"),
    (["--exposures", "0,1.5"], "non-negative integers"),
    (["--exposures", "0,1", "--train-per-count", "100000"], "need 200000 facts"),
])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, argv, message):
    out = tmp_path / "inj"
    assert main(["inject", "--model", "tiny-random", "--facts", "builtin", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("sftnb: error:") and message in err and len(err.splitlines()) == 1
    assert not out.exists() and not any(tmp_path.iterdir())


def test_cli_refuses_an_existing_out_without_overwrite(tmp_path, capsys):
    out = tmp_path / "inj"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["inject", "--model", "tiny-random", "--facts", "builtin", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"


@pytest.mark.slow
def test_cli_writes_a_folder_restore_accepts_as_base(tmp_path, capsys):
    facts = tmp_path / "f.jsonl"
    facts.write_text("".join(json.dumps({"relation": "country_capital", "subject": c, "answers": [a],
                                         "split": "train"}) + "\n"
                             for c, a in [("France", "Paris"), ("Peru", "Lima"), ("Chile", "Santiago"),
                                          ("Japan", "Tokyo"), ("Kenya", "Nairobi"), ("Spain", "Madrid")]))
    out = tmp_path / "inj"
    assert main(["inject", "--model", "tiny-random", "--facts", str(facts), "--exposures", "0,1,2",
                 "--train-per-count", "2", "--out", str(out)]) == 0
    assert "injected 6 facts (6 statements" in capsys.readouterr().out
    assert (out / "config.json").is_file() and not (tmp_path / ".inj.units").exists()
    restored = tmp_path / "restored"
    assert main(["restore", "--base", str(out), "--tuned", str(out), "--k", "5", "--out", str(restored)]) == 0
    assert (restored / "config.json").is_file()
    assert render("{subject} -> {answer}", Fact("r", "A", ("B",), "train", "in", "")) == "A -> B"
