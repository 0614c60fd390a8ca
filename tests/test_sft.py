"""SFT format, masking, sampling and a real fine-tuning run on a tiny model."""
import pytest
import torch

from sftnb.config import SFTConfig
from sftnb.data.facts import Fact
from sftnb.evaluate import evaluate_sets
from sftnb.grid import balanced_sample
from sftnb.lm.models import tiny_model
from sftnb.sft import IGNORE, collate, example_ids, prompt_ids, qa_prompt, train


@pytest.fixture(scope="module")
def tiny():
    return tiny_model(seed=0)


def test_prompt_format_and_label_masking(tiny):
    _, tok = tiny
    ids, labels = example_ids(tok, "Which country is Paris located in?", "France")
    prompt = prompt_ids(tok, "Which country is Paris located in?")
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert ids[:len(prompt)] == prompt
    assert labels[:len(prompt)] == [IGNORE] * len(prompt)            # prompt tokens carry no loss
    assert labels[len(prompt):] == ids[len(prompt):]                  # answer + EOS do
    text = tok.decode(ids, skip_special_tokens=True)
    assert "<|question|> Which country is Paris located in? <|answer|>" in text and text.rstrip().endswith("France")
    assert qa_prompt("Q?") == "<|question|> Q? <|answer|>"


def test_collate_pads_and_masks():
    batch = collate([([5, 6, 7], [IGNORE, 6, 7]), ([5, 6], [IGNORE, 6])], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 5, 6]]              # left padding: answers end together
    assert batch["labels"].tolist() == [[IGNORE, 6, 7], [IGNORE, IGNORE, 6]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert batch["position_ids"].tolist() == [[0, 1, 2], [0, 0, 1]]


def test_answer_loss_equals_the_full_loss_on_a_right_padded_batch(tiny):
    """Projecting only the answer columns of a left-padded batch gives Hugging Face's loss (and gradients) on the
    same examples right-padded: same value, nothing lost to padding, no NaN from fully masked pad rows."""
    from sftnb.sft import answer_loss
    model, tok = tiny
    examples = [example_ids(tok, q, a) for q, a in [("What is the capital of Peru?", "Lima"),
                                                      ("Which country is Porto Alegre located in?", "Brazil"),
                                                      ("Which continent is Chad in?", "Africa")]]
    width = max(len(ids) for ids, _ in examples)
    right = {"input_ids": torch.tensor([ids + [tok.pad_token_id] * (width - len(ids)) for ids, _ in examples]),
             "labels": torch.tensor([lab + [IGNORE] * (width - len(lab)) for _, lab in examples]),
             "attention_mask": torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in examples])}
    grads = []
    for fn in (lambda: model(**right).loss, lambda: answer_loss(model, collate(examples, tok.pad_token_id))):
        model.zero_grad()
        loss = fn()
        loss.backward()
        grads.append((loss.item(), [p.grad.clone() for p in model.parameters()]))
    (ref, g_ref), (ours, g_ours) = grads
    assert abs(ref - ours) < 1e-5 * abs(ref)
    assert all(torch.isfinite(g).all() and torch.allclose(g, h, rtol=1e-4, atol=1e-6) for g, h in zip(g_ours, g_ref))


def _facts(n_rel=4, per_rel=7):
    return [Fact(f"r{r}", f"s{r}-{i}", (f"a{i}",), "train", "in", f"q{r}-{i}") for r in range(n_rel)
            for i in range(per_rel)]


@pytest.mark.parametrize("n", [1, 5, 9, 13, 28])
def test_balanced_sampling_differs_by_at_most_one(n):
    facts = _facts()
    got = balanced_sample(facts, n, seed=3)
    assert len(got) == n and len(set(got)) == n
    counts = [sum(f.relation == f"r{r}" for f in got) for r in range(4)]
    assert max(counts) - min(counts) <= 1
    assert balanced_sample(facts, n, seed=3) == got                      # seeded
    assert balanced_sample(facts, 29, seed=3) is None                    # more than there is
    assert sorted(balanced_sample(facts, "all", seed=1), key=str) == sorted(facts, key=str)


def test_balanced_sampling_with_a_small_relation():
    facts = _facts(3, 10) + [Fact("tiny", "x", ("y",), "train", "in", "q")]
    got = balanced_sample(facts, 16, seed=0)
    counts = sorted(sum(f.relation == r for f in got) for r in ("r0", "r1", "r2"))
    assert sum(f.relation == "tiny" for f in got) == 1 and max(counts) - min(counts) <= 1


def test_sft_lifts_accuracy_of_trained_facts():
    model, tok = tiny_model(seed=1)
    capitals = [("France", "Paris"), ("Japan", "Tokyo"), ("Peru", "Lima"), ("Kenya", "Nairobi"),
                ("Chile", "Santiago"), ("Egypt", "Cairo")]
    facts = [Fact("country_capital", c, (a,), "train", "in", f"What is the capital of {c}?") for c, a in capitals]
    before = evaluate_sets(model, tok, {"train": facts}, max_new_tokens=8, progress=False)["train"]["accuracy"]
    cfg = SFTConfig(learning_rate=3e-3, batch_size=6, epochs=60, scheduler="constant", max_grad_norm=1.0)
    torch.manual_seed(0)
    report = train(model, tok, [(f.question, f.answers[0]) for f in facts], cfg, seed=0, progress=False)
    after = evaluate_sets(model, tok, {"train": facts}, max_new_tokens=8, progress=False)["train"]["accuracy"]
    assert before <= 0.2
    assert after >= 0.9, f"accuracy after SFT {after}"
    assert report.steps == 60 and report.losses[-1] < report.losses[0] / 5


def test_training_is_deterministic_for_a_seed():
    pairs = [("What is the capital of Peru?", "Lima"), ("What is the capital of Chile?", "Santiago")] * 3
    cfg = SFTConfig(learning_rate=1e-3, batch_size=2)
    states = []
    for _ in range(2):
        model, tok = tiny_model(seed=2)
        train(model, tok, pairs, cfg, seed=5, progress=False)
        states.append({k: v.clone() for k, v in model.state_dict().items()})
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
