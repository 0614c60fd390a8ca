"""The generation engine (sftnb.lm.generation) on tiny random LLaMAs: exactness against Hugging Face, determinism,
ordering, EOS handling and row compaction, sampling distribution, and the scoring helpers."""
from __future__ import annotations

import math

import pytest
import torch

from sftnb.lm import batching as B
from sftnb.lm import generation as G
from sftnb.lm.generation import decode, generate, greedy
from sftnb.lm.scoring import continuation_logprobs, first_token_logits
from sftnb.lm.models import tiny_model

TEXTS = ["The capital of X is", "X was born in the city of", "X is a", "Who founded X? The founder of X is",
         "X plays", "The language spoken in X is"]


@pytest.fixture(scope="module")
def tiny():
    model, tok = tiny_model(seed=0)
    return model.eval(), tok


@pytest.fixture(scope="module")
def prompts(tiny):
    _, tok = tiny
    return [tok.encode(t) for t in TEXTS] + [[7], [5, 6, 7]]


def _hf_greedy(model, batch, pad, max_new):
    """Hugging Face greedy generate on a left-padded batch (no EOS): the new tokens of each row."""
    width = max(len(p) for p in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, p in enumerate(batch):
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new,
                         min_new_tokens=max_new, eos_token_id=None, pad_token_id=pad)
    return out[:, width:].tolist()


# ------------------------------------------------------------------------------------------- greedy
def test_greedy_equals_hf_generate_single_prompts(tiny, prompts):
    model, tok = tiny
    ours = greedy(model, prompts, max_new_tokens=12, progress=False)
    for p, c in zip(prompts, ours):
        assert c == _hf_greedy(model, [p], tok.pad_token_id, 12)[0]


def test_greedy_equals_hf_generate_batched_left_padded(tiny, prompts):
    model, tok = tiny
    ours = greedy(model, prompts, max_new_tokens=12, progress=False)
    assert ours == _hf_greedy(model, prompts, tok.pad_token_id, 12)


def test_small_batch_budget_gives_same_greedy(tiny, prompts):
    model, _ = tiny
    one = greedy(model, prompts, max_new_tokens=10, batch_tokens=1 << 20, progress=False)
    many = greedy(model, prompts, max_new_tokens=10, batch_tokens=20, progress=False)   # one prompt per batch
    assert one == many


@pytest.fixture(scope="module")
def qa_prompts(tiny):
    from sftnb.sft import prompt_ids
    _, tok = tiny
    qs = ["Which country is Lyon located in?", "Which country is Porto Alegre located in?",
          "Which country is Ulm located in?", "What is the capital of Peru?"]
    return [prompt_ids(tok, q) for q in qs]


def test_shared_prefix_prefill_is_exact(tiny, qa_prompts, monkeypatch):
    """Prompts that start alike are prefilled once for the batch: greedy output still equals Hugging Face's,
    samples equal those of the unshared path, within a relation and across relations."""
    model, tok = tiny
    same_relation = qa_prompts[:3]
    assert G._shared_prefix(same_relation) > G._shared_prefix(qa_prompts) >= G.MIN_SHARED   # the path runs
    assert G._shared_prefix([[1, 2, 3], [1, 2, 3]]) == 2                  # each prompt keeps a token of its own
    for batch in (same_relation, qa_prompts):
        assert greedy(model, batch, max_new_tokens=10, progress=False) == _hf_greedy(model, batch,
                                                                                      tok.pad_token_id, 10)
        kw = dict(n=3, temperature=0.8, max_new_tokens=8, seed=1, progress=False)
        shared = generate(model, batch, **kw)
        monkeypatch.setattr(G, "MIN_SHARED", 10 ** 9)
        assert generate(model, batch, **kw) == shared
        monkeypatch.undo()


# ------------------------------------------------------------------------------------------ sampling
def test_same_seed_same_samples_other_seed_differs(tiny, prompts):
    model, _ = tiny
    kw = dict(n=4, temperature=1.0, max_new_tokens=8, progress=False)
    a = generate(model, prompts, seed=3, **kw)
    b = generate(model, prompts, seed=3, **kw)
    c = generate(model, prompts, seed=4, **kw)
    assert a == b
    assert a != c
    assert len(a) == len(prompts) and all(len(x) == 4 and all(len(s) == 8 for s in x) for x in a)
    # the n samples of a prompt are distinct draws (random model, vocab 384: collisions are improbable)
    assert all(len({tuple(s) for s in x}) > 1 for x in a)


def test_order_preserved_and_independent_of_batching(tiny, prompts):
    model, _ = tiny
    kw = dict(n=3, temperature=0.8, max_new_tokens=6, seed=11, progress=False)
    base = generate(model, prompts, batch_tokens=1 << 20, **kw)
    # many small batches: same samples
    assert generate(model, prompts, batch_tokens=40, **kw) == base
    # reversed prompt order: results follow the prompts
    rev = generate(model, prompts[::-1], **kw)
    assert rev[::-1] == base
    # a prompt's samples do not depend on the other prompts of the call
    assert generate(model, [prompts[2]], **kw)[0] == base[2]


def test_duplicate_prompts_get_independent_samples(tiny, prompts):
    model, _ = tiny
    out = generate(model, [prompts[0], prompts[0]], n=2, temperature=1.0, max_new_tokens=8, seed=0, progress=False)
    assert out[0] != out[1]


def test_greedy_n_copies_identical(tiny, prompts):
    model, _ = tiny
    out = generate(model, prompts[:3], n=3, temperature=0.0, max_new_tokens=5, progress=False)
    g = greedy(model, prompts[:3], max_new_tokens=5, progress=False)
    assert out == [[x] * 3 for x in g]


def test_inverse_cdf_sampler_is_exact():
    """Stratified uniforms (i + 0.5) / N through the sampler reproduce softmax(logits / T) to within 1 / N."""
    torch.manual_seed(0)
    vocab, n, temp = 1000, 20000, 0.7            # 1000: several blocks, last one partial
    logits = torch.randn(vocab) * 3
    logits[::7] = float("-inf")                   # impossible tokens are never drawn
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    tokens = G._sample(logits.expand(n, vocab).contiguous(), temp, u.float())
    freq = torch.bincount(tokens, minlength=vocab).double() / n
    probs = torch.softmax(logits.double() / temp, -1)
    assert freq[::7].sum() == 0
    cdf_err = (freq.cumsum(0) - probs.cumsum(0)).abs().max().item()
    assert cdf_err <= 1.5 / n


def test_sampling_distribution_matches_softmax():
    """One-step generation from a small-vocabulary model: empirical frequencies close to softmax(logits / T)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=12, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(40)            # a non-uniform next-token distribution
    prompt = [1, 2, 3, 4]
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1].double()
    n = 20000
    for temp in (0.7, 1.5):
        probs = torch.softmax(logits / temp, -1)
        assert probs.max() < 0.9 and (probs > 0.02).sum() >= 3, probs
        out = generate(model, [prompt], n=n, temperature=temp, max_new_tokens=1, seed=5, progress=False)[0]
        toks = torch.tensor([s[0] for s in out])
        freq = torch.bincount(toks, minlength=12).double() / n
        sd = (probs * (1 - probs) / n).sqrt()
        assert ((freq - probs).abs() <= 5 * sd + 1e-3).all(), (freq, probs)


# --------------------------------------------------------------------------------------- EOS handling
def test_eos_cuts_completions(tiny, prompts):
    model, _ = tiny
    full = greedy(model, prompts, max_new_tokens=12, progress=False)
    # declare the token each prompt emits at step 3 an EOS: its completion stops right before the first one
    for p, g in zip(prompts, full):
        eos = g[3]
        cut = greedy(model, [p], max_new_tokens=12, eos_token_ids=[eos], progress=False)[0]
        assert cut == g[:g.index(eos)]


def test_forced_eos_gives_empty_completions_and_stops(tiny, prompts):
    model, tok = tiny
    eos = tok.eos_token_id
    calls = []
    h1 = model.lm_head.register_forward_hook(lambda mod, inp, out: out.index_fill(-1, torch.tensor([eos]), 1e4))
    h2 = model.register_forward_pre_hook(lambda mod, args, kw: calls.append(kw["input_ids"].shape), with_kwargs=True)
    try:
        out = generate(model, prompts, n=3, temperature=1.0, max_new_tokens=32, eos_token_ids=[eos],
                       batch_tokens=1 << 20, progress=False)
    finally:
        h1.remove()
        h2.remove()
    assert out == [[[]] * 3 for _ in prompts]
    assert len(calls) <= G._check_every(torch.device("cpu"))   # one prefill, then it stops at the first check


def test_finished_rows_leave_the_batch(tiny, prompts):
    model, _ = tiny
    full = greedy(model, prompts, max_new_tokens=16, progress=False)
    # find prompts a, b and a token x that a emits at step 1 and b never emits
    found = None
    for a, ga in enumerate(full):
        for b, gb in enumerate(full):
            if a != b and ga[1] not in ga[:1] and ga[1] not in gb:
                found = (a, b, ga[1])
                break
        if found:
            break
    assert found, "no suitable prompt pair"
    a, b, x = found
    rows = []
    h = model.register_forward_pre_hook(lambda mod, args, kw: rows.append(kw["input_ids"].shape[0]),
                                        with_kwargs=True)
    try:
        out = greedy(model, [prompts[a], prompts[b]], max_new_tokens=16, eos_token_ids=[x],
                     batch_tokens=1 << 20, progress=False)
    finally:
        h.remove()
    assert out == [full[a][:1], full[b]]
    assert rows[0] == 2 and rows[-1] == 1 and len(rows) == 16          # prefill + 15 decode steps
    assert rows.index(1) <= G._check_every(torch.device("cpu")) + 1             # the finished row left at once


def test_empty_prompt_rejected(tiny):
    model, _ = tiny
    with pytest.raises(ValueError):
        generate(model, [[1, 2], []], progress=False)


def test_decode(tiny, prompts):
    model, tok = tiny
    out = generate(model, prompts[:2], n=2, temperature=1.0, max_new_tokens=4, progress=False)
    texts = decode(tok, out)
    assert texts == [[tok.decode(c, skip_special_tokens=True) for c in x] for x in out]


# --------------------------------------------------------------------------------------------- scoring
def test_first_token_logits_match_plain_forward(tiny, prompts):
    model, _ = tiny
    got = first_token_logits(model, prompts, batch_tokens=30)
    assert got.shape == (len(prompts), model.config.vocab_size) and got.dtype == torch.float32
    with torch.no_grad():
        for i, p in enumerate(prompts):
            ref = model(torch.tensor([p])).logits[0, -1].float()
            torch.testing.assert_close(got[i], ref, atol=1e-5, rtol=1e-5)


def test_continuation_logprobs_match_brute_force(tiny, prompts):
    model, _ = tiny
    conts = [[[17], [17, 93, 5], []], [[239, 239]], [], [[1, 2, 3, 4, 5], [9]], [[300]], [[12, 13]], [[4]],
             [[8, 9]]]
    temp = 0.7
    for budget in (1 << 20, 25):
        got = continuation_logprobs(model, prompts, conts, temperature=temp, batch_tokens=budget)
        assert [len(x) for x in got] == [len(x) for x in conts]
        with torch.no_grad():
            for p, cs, gs in zip(prompts, conts, got):
                for c, g in zip(cs, gs):
                    if not c:
                        assert g == 0.0
                        continue
                    logits = model(torch.tensor([p + c])).logits[0].double()
                    lp = torch.log_softmax(logits / temp, -1)
                    ref = sum(lp[len(p) - 1 + t, tok].item() for t, tok in enumerate(c))
                    assert math.isclose(g, ref, rel_tol=1e-4, abs_tol=1e-4), (g, ref)


def test_batches_respect_budget_and_balance():
    lengths = [3, 3, 4, 5, 5, 6, 9, 9, 10, 30]
    order = list(range(len(lengths)))
    cost = lambda rows, i: rows * 2 * (lengths[i] + 4)        # noqa: E731  (n=2, max_new_tokens=4)
    for budget in (1, 40, 100, 200, 10_000):
        bs = B.batches(order, cost, budget)
        assert [i for b in bs for i in b] == order                                  # every item once, in order
        assert all(len(b) == 1 or cost(len(b), b[-1]) <= budget for b in bs)      # within budget
        assert len(bs) == len(B._greedy_batches(order, cost, budget))              # no more batches than greedy
    # 32 equal prompts, budget for 31: two batches of 16 rather than 31 + 1
    bs = B.batches(list(range(32)), lambda rows, i: rows * 10, 310)
    assert [len(b) for b in bs] == [16, 16]


def test_stopping_once_the_answer_is_there_changes_no_correctness():
    """evaluate_sets stops a completion once it contains its answer; the verdicts equal those on full completions."""
    from sftnb.evaluate import answer_questions, score
    from sftnb.data.facts import Fact
    model, tok = tiny_model(seed=3)
    qs = [f"What is the capital of Place{i}?" for i in range(24)]
    full = answer_questions(model, tok, qs, max_new_tokens=12, progress=False)
    # answers: a word the model does say (at varying positions) for half the questions, a word it never says else
    answers = []
    for i, text in enumerate(full):
        words = [w for w in text.split() if w.isalpha()]
        answers.append((words[len(words) // 2],) if i % 2 and words else ("Zzyzx",))
    facts = [Fact("country_capital", f"Place{i}", a, "test", "in", q) for i, (q, a) in enumerate(zip(qs, answers))]
    stopped = answer_questions(model, tok, qs, max_new_tokens=12, progress=False, answers=answers)
    assert score(facts, stopped) == score(facts, full)
    assert sum(score(facts, full)) >= 2 and any(len(s) < len(f) for s, f in zip(stopped, full))


class _OnDevice(torch.Tensor):
    """A tensor that records every operation which would move data to the host (or wait for it) on a GPU."""
    syncs: list[str] = []
    HOST = {"cpu", "tolist", "item", "numpy", "__int__", "__bool__", "__index__", "__float__", "nonzero"}

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        if name in cls.HOST:
            cls.syncs.append(name)
            with torch._C.DisableTorchFunctionSubclass():
                out = func(*args, **(kwargs or {}))
            return out.as_subclass(torch.Tensor) if isinstance(out, torch.Tensor) else out   # on the host now
        return super().__torch_function__(func, types, args, kwargs)


def test_stop_rule_check_is_one_transfer_and_asks_what_a_row_by_row_check_asks():
    """Issue 23: StopRule's check copies the candidates, rows and tokens to the host in ONE transfer (it copied
    each candidate row by row); it asks ``done`` exactly the questions the row-by-row check asked. Over a window of
    steps (a GPU checks every few), each row is asked at its boundaries, earliest first, until one ends it."""
    torch.manual_seed(0)
    tokens, alive = torch.randint(0, 50, (6, 10)), torch.tensor([0, 2, 3, 5, 6, 7])
    full_tokens = torch.zeros((8, 10), dtype=torch.long)
    full_tokens[alive] = tokens
    cand = torch.tensor([True, False, True, True, False, True])
    owners, asked = [10, 11, 12, 13], []
    rule = G.StopRule(torch.zeros(50, dtype=torch.bool), lambda p, toks: asked.append((p, toks)) or p % 2 == 0)
    _OnDevice.syncs = []
    hits = G._stop_check(rule, cand[:, None].as_subclass(_OnDevice), alive.as_subclass(_OnDevice),
                         full_tokens.as_subclass(_OnDevice), 5, 2, owners)
    assert _OnDevice.syncs == ["cpu"]
    expect = [(owners[int(alive[r]) // 2], full_tokens[alive[r], :5].tolist()) for r in (0, 2, 3, 5)]
    assert asked == expect
    ended = [r for r in (0, 2, 3, 5) if owners[int(alive[r]) // 2] % 2 == 0]
    assert hits[0].tolist() == ended and hits[1].tolist() == [int(alive[r]) for r in ended]
    assert hits[2].tolist() == [5] * len(ended)
    asked.clear()
    assert G._stop_check(rule, torch.zeros((6, 1), dtype=torch.bool), alive, full_tokens, 5, 2, owners) is None
    assert asked == []
    # a window of steps 4-7: row 0 has boundaries at 5 and 7 and is done from 7 tokens on; row 1 at 4, never done
    window = torch.zeros((6, 4), dtype=torch.bool)
    window[0, [1, 3]] = window[1, 0] = True
    rule = G.StopRule(torch.zeros(50, dtype=torch.bool),
                      lambda p, toks: asked.append((p, len(toks))) or (p == owners[0] and len(toks) >= 7))
    hits = G._stop_check(rule, window, alive, full_tokens, 4, 2, owners)
    assert asked == [(owners[0], 5), (owners[0], 7), (owners[1], 4)]
    assert [t.tolist() for t in hits] == [[0], [0], [7]]


def test_a_stop_rule_checked_every_few_steps_cuts_where_a_check_every_step_cuts(tiny, prompts, monkeypatch):
    """On a GPU finished rows are looked for every CHECK_EVERY steps (each look is a host sync). The stop rule then
    looks at every step since the last check, so every sample ends at the token where a check at every step (the
    CPU) ends it, on the dynamic and on the static path; before, only each fourth step's boundary was seen."""
    model, _ = tiny
    kw = dict(n=3, temperature=0.9, max_new_tokens=11, seed=7, progress=False, batch_tokens=1 << 20)
    boundary = torch.zeros(model.config.vocab_size, dtype=torch.bool)
    boundary[::3] = True                                        # a third of the tokens begin a word
    rule = G.StopRule(boundary, lambda p, toks: len(toks) >= 2 + p % 3)
    every_step = generate(model, prompts, stop=rule, **kw)
    assert {len(c) for cs in every_step for c in cs} - {kw["max_new_tokens"]}     # the rule did end samples
    monkeypatch.setattr(G, "_check_every", lambda dev: 4)
    for static in (False, True):
        assert generate(model, prompts, stop=rule, static=static, **kw) == every_step


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_static_cache_path_gives_the_dynamic_paths_tokens(tiny, prompts, temperature):
    """Issue 23: the static-KV-cache decode (on CUDA also CUDA graphs; here its uncompiled form) gives the tokens
    of the dynamic path for a seed, with EOS and the stop rule ending rows (rows stay in a static batch)."""
    model, tok = tiny
    kw = dict(n=3 if temperature else 1, temperature=temperature, max_new_tokens=9, seed=5, progress=False,
              batch_tokens=1 << 20)
    base = generate(model, prompts, **kw)
    assert generate(model, prompts, static=True, **kw) == base
    # an EOS that fires, and a stop rule that ends every row at its first word boundary after 2 tokens
    eos = sorted({c[0][2] for c in base if len(c[0]) > 2})[:2]
    rule = G.StopRule(torch.ones(model.config.vocab_size, dtype=torch.bool), lambda p, toks: len(toks) >= 2)
    for extra in ({"eos_token_ids": eos}, {"stop": rule}):
        dyn = generate(model, prompts, **kw, **extra)
        assert dyn != base and generate(model, prompts, static=True, **kw, **extra) == dyn


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_a_static_call_decodes_every_batch_in_one_shape_with_the_dynamic_tokens(tiny, prompts, temperature,
                                                                                   monkeypatch):
    """Issue 23: torch.compile (dynamic=False) and CUDA graphs capture one graph per decode shape, so a static call
    over many batches pads every prompt to the call's width (rounded up to 8) and every batch to the call's batch
    size (a smaller last one to a power of two): at most two shapes, where the dynamic path has one per batch. The
    tokens stay the dynamic path's, for every prompt, across several batches."""
    model, tok = tiny
    many = [p for _ in range(4) for p in prompts]                          # 4 x 7 prompts, lengths 1-9
    n = 3 if temperature else 1
    kw = dict(n=n, temperature=temperature, max_new_tokens=6, seed=2, progress=False, batch_tokens=n * 17 * 5)
    shapes, caches = [], []
    real = G.static_cache

    def recording(model_, cache, n_, capacity, held):
        cache_, step = real(model_, cache, n_, capacity, held)
        caches.append(cache_)                                              # kept: ids stay unique
        def step_fn(**inputs):
            shapes.append((tuple(inputs["input_ids"].shape), tuple(inputs["attention_mask"].shape)))
            return step(**inputs)
        return cache_, step_fn
    monkeypatch.setattr(G, "static_cache", recording)
    dynamic = generate(model, many, static=False, **kw)
    static = generate(model, many, static=True, **kw)
    assert static == dynamic
    width = G._bucket(max(map(len, many))) + kw["max_new_tokens"]
    assert {m for _, m in shapes} == {(s[0], width) for s, _ in shapes}      # every mask as wide as the call's
    assert len({s for s, _ in shapes}) <= 2
    assert len({id(c) for c in caches}) <= 2 < len(caches)     # one cache a shape, reset for each batch: the graph is replayed
    assert len(shapes) >= 3 * (kw["max_new_tokens"] - 1)                     # several batches were decoded


def test_static_plan_pads_batches_to_one_size():
    assert G._bucket(1) == 8 and G._bucket(8) == 8 and G._bucket(9) == 16
    plan = G._static_batches([[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]])
    assert [rows for _, rows in plan] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11]]       # 2 is a power of 2
    plan = G._static_batches([[0, 1, 2, 3, 4, 5], [6, 7, 8]])
    assert plan[1] == ([6, 7, 8], [6, 7, 8, 8]) and G._static_batches([]) == []
    plan = G._static_batches([[0, 1, 2, 3, 4], [5, 6, 7, 8]])              # even split: the tail to full size
    assert plan[1] == ([5, 6, 7, 8], [5, 6, 7, 8])


def test_no_prompts_give_no_completions_on_every_path(tiny, monkeypatch):
    """A smoke run's empty test split reaches generate with no prompts. On a GPU ("auto" is static there) the
    static path sized its width from the longest prompt, before its fallback, and crashed; every path returns []."""
    model, tok = tiny
    monkeypatch.setattr(G, "_on_cuda", lambda m: True)                    # "auto" as on a GPU
    monkeypatch.setattr(G, "_STATIC", {"failed": False})
    for static in ("auto", True, False):
        assert generate(model, [], n=3, temperature=0.7, static=static, progress=False) == []
    assert not G._STATIC["failed"]


def test_static_batches_are_a_power_of_two_of_rows():
    """The budget follows the free memory, which moves between calls: batches of the largest power of two that
    fits keep a run's calls to a few decode shapes (each one a compile), at no less than half the rows."""
    assert G._static_groups(list(range(7)), 3) == [[0, 1], [2, 3], [4, 5], [6]]
    assert G._static_groups(list(range(5)), 8) == [[0, 1, 2, 3, 4]]
    assert G._static_groups([0, 1], 0) == [[0], [1]]
    assert {len(b) for b in G._static_groups(list(range(100)), 1000)} == {100}


def test_past_the_recompile_limit_a_static_decode_falls_back_with_the_same_tokens(tiny, prompts, monkeypatch):
    """Past ``kv_cache.RECOMPILE_LIMIT`` decode shapes dynamo would run the step uncompiled, silently: the static
    cache's costs without its graphs. The step raises instead, and generate warns once and decodes dynamically,
    with the same tokens. The CUDA branch runs here with the device check patched and the eager backend."""
    import torch._dynamo

    from sftnb.lm import kv_cache
    model, _ = tiny
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, backend="eager", dynamic=False))
    monkeypatch.setattr(kv_cache, "device_of", lambda m: torch.device("cuda"))
    monkeypatch.setattr(kv_cache, "_COMPILED", {})
    monkeypatch.setattr(kv_cache, "RECOMPILE_LIMIT", 2)
    monkeypatch.setattr(G, "_STATIC", {"failed": False})
    torch._dynamo.reset()
    kw = dict(n=1, temperature=0.0, max_new_tokens=4, progress=False, batch_tokens=1 << 20)
    for k in (1, 2):                                            # two shapes: inside the limit, no warning
        assert generate(model, prompts[:k], static=True, **kw) == generate(model, prompts[:k], static=False, **kw)
    assert not G._STATIC["failed"]
    with pytest.warns(UserWarning, match="static KV cache decode failed"):
        assert generate(model, prompts, static=True, **kw) == generate(model, prompts, static=False, **kw)
    assert G._STATIC["failed"]
    torch._dynamo.reset()


def test_auto_decodes_dynamically_on_a_cpu_and_a_failed_static_decode_falls_back(tiny, prompts, monkeypatch):
    """``static="auto"`` (the default of generate and of the evaluation) is static on CUDA only: on a CPU nothing
    changes. Where the static path fails (a compile or capture error on a GPU), the call warns once and decodes
    dynamically, with the same tokens, and "auto" then stays dynamic in the process, for every model."""
    model, _ = tiny
    monkeypatch.setattr(G, "_STATIC", {"failed": False})
    kw = dict(n=2, temperature=0.7, max_new_tokens=5, seed=1, progress=False, batch_tokens=1 << 20)
    calls = []
    real = G._generate_batch
    monkeypatch.setattr(G, "_generate_batch", lambda *a, **k: calls.append(k.get("static", False)) or real(*a, **k))
    base = generate(model, prompts, **kw)
    assert calls == [False]

    def broken(*a, **k):
        raise RuntimeError("graph capture failed\nmore")
    monkeypatch.setattr(G, "static_cache", broken)
    monkeypatch.setattr(G, "_on_cuda", lambda m: True)                    # "auto" as on a GPU
    calls.clear()
    with pytest.warns(UserWarning, match="static KV cache decode failed .RuntimeError: graph capture failed.; "):
        assert generate(model, prompts, **kw) == base
    assert calls == [True, False] and G._STATIC["failed"]
    calls.clear()
    assert generate(model, prompts, **kw) == base and calls == [False]
    other = tiny_model(seed=4)[0].eval()                                   # another model: no second attempt
    calls.clear()
    generate(other, prompts, **kw)
    assert calls == [False]
    monkeypatch.setattr(G, "_STATIC", {"failed": False})                  # and SFTNB_STATIC_DECODE=0 opts out
    monkeypatch.setattr(G, "static_cache", lambda *a, **k: pytest.fail("static path taken"))
    monkeypatch.setenv("SFTNB_STATIC_DECODE", "0")
    calls.clear()
    assert generate(model, prompts, **kw) == base and calls == [False]


def test_the_compiled_decode_step_is_traced_once_for_every_model_of_a_class_and_holds_no_model(monkeypatch):
    """The static path compiles the model class's forward once (``kv_cache.compiled_step``, dynamic=False) and
    calls it with each model. The grid evaluates one new model after another, so a trace per model would put a
    compile (minutes at 8B) before each evaluation and run past dynamo's recompile limit. Dynamo inlines
    nn.Modules (their parameters are inputs): models of one class made from one template (one config object) share
    one trace per shape; on CUDA, graphs are then re-recorded per model, which the GPU suite times as another
    model's first call. And the compiled step holds no model: a per-model cache of ``model.forward`` kept every
    fine-tuned model alive (on a GPU, in its memory) for the rest of the process. Checked here with the eager
    backend: dynamo's tracing and guards without a compiler."""
    import gc
    import weakref

    import torch._dynamo
    from torch._dynamo.utils import counters

    from sftnb.lm import kv_cache
    from sftnb.lm.models import copy_model, tiny_model
    monkeypatch.setattr(kv_cache, "_COMPILED", {})
    torch._dynamo.reset()
    counters.clear()
    first = tiny_model(seed=0)[0].eval()
    ids = torch.randint(3, 300, (4, 6))
    other = tiny_model(seed=1)[0].state_dict()
    # as the pipeline makes its models: copies of the run's template (models.copy_model), its config shared
    models = [first, copy_model(first, "cpu").eval(), copy_model(first, "cpu", state=other).eval()]
    with torch.inference_mode():
        outs = [kv_cache.compiled_step(m, backend="eager")(input_ids=ids).logits for m in models]
        assert counters["stats"]["unique_graphs"] == 1 and len(kv_cache._COMPILED) == 1
        assert torch.equal(outs[0], first(input_ids=ids).logits)
        assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], outs[2])   # each with its own weights
        alone = tiny_model(seed=1)[0].eval()
        kv_cache.compiled_step(alone, backend="eager")(input_ids=ids)
    assert counters["stats"]["unique_graphs"] == 2          # a model with a config of its own is traced again
    refs = [weakref.ref(m) for m in (*models[1:], alone)]
    del models, alone, outs
    gc.collect()
    assert [r() for r in refs] == [None] * 3               # the compiled step kept none of them
    torch._dynamo.reset()
