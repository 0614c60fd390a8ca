"""The generation engine against plain transformers on a tiny random LLaMA."""
import pytest
import torch

from sftnb.generation import continuation_logprobs, first_token_logits, generate, greedy
from sftnb.models import tiny_model


@pytest.fixture(scope="module")
def tiny():
    model, tok = tiny_model(seed=3)
    return model.eval(), tok


def _prompts(tok):
    texts = ["The capital of France is", "Lima is located in", "Which country is Tokyo in? Answer:",
             "Kenya", "The official language of Peru is the language called"]
    return [[tok.bos_token_id] + tok.encode(t, add_special_tokens=False) for t in texts]


def hf_greedy(model, prompt, n_new, pad):
    ids = torch.tensor([prompt])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new, do_sample=False,
                         pad_token_id=pad, eos_token_id=None)
    return out[0, len(prompt):].tolist()


def test_greedy_equals_plain_generate(tiny):
    model, tok = tiny
    prompts = _prompts(tok)
    ours = greedy(model, prompts, max_new_tokens=12, pad_token_id=tok.pad_token_id, progress=False)
    for p, got in zip(prompts, ours):
        assert got == hf_greedy(model, p, 12, tok.pad_token_id)
    # many small batches (left padding within each) give the same tokens as one batch
    small = greedy(model, prompts, max_new_tokens=12, pad_token_id=tok.pad_token_id, batch_tokens=40,
                   progress=False)
    assert small == ours


def test_sampling_is_seeded_and_ordered(tiny):
    model, tok = tiny
    prompts = _prompts(tok)
    a = generate(model, prompts, n=4, temperature=0.7, max_new_tokens=6, seed=1, progress=False)
    b = generate(model, prompts, n=4, temperature=0.7, max_new_tokens=6, seed=1, progress=False)
    c = generate(model, prompts, n=4, temperature=0.7, max_new_tokens=6, seed=2, progress=False)
    assert a == b and a != c
    assert [len(x) for x in a] == [4] * len(prompts)


def test_eos_cuts_completions(tiny):
    model, tok = tiny
    prompts = _prompts(tok)
    free = greedy(model, prompts, max_new_tokens=8, progress=False)
    stop = free[0][2]                                  # pretend the third greedy token is an EOS
    cut = greedy(model, prompts, max_new_tokens=8, eos_token_ids=[stop], progress=False)
    for f, c in zip(free, cut):
        want = f[:f.index(stop)] if stop in f else f
        assert c == want


def test_sampling_follows_the_tempered_distribution(tiny):
    model, tok = tiny
    prompt = _prompts(tok)[0]
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1]
    probs = (logits / 0.7).softmax(-1)
    outs = generate(model, [prompt], n=4000, temperature=0.7, max_new_tokens=1, seed=0, progress=False)[0]
    counts = torch.bincount(torch.tensor([o[0] for o in outs]), minlength=probs.numel()).float() / 4000
    top = probs.topk(5).indices
    assert torch.allclose(counts[top], probs[top], atol=0.03)


def test_first_token_logits_and_continuation_logprobs(tiny):
    model, tok = tiny
    prompts = _prompts(tok)
    got = first_token_logits(model, prompts, batch_tokens=30)
    conts = [[[5, 9], [7]], [[11, 12, 13]], [], [[4]], [[8, 8]]]
    lps = continuation_logprobs(model, prompts, conts, temperature=0.7, batch_tokens=30)
    with torch.no_grad():
        for i, p in enumerate(prompts):
            ref = model(torch.tensor([p])).logits[0, -1]
            assert torch.allclose(got[i], ref, atol=1e-4)
            for j, c in enumerate(conts[i]):
                full = model(torch.tensor([p + c])).logits[0]
                lp = sum(float((full[len(p) - 1 + t] / 0.7).log_softmax(-1)[tok_id]) for t, tok_id in enumerate(c))
                assert abs(lps[i][j] - lp) < 1e-4
    assert lps[2] == []
