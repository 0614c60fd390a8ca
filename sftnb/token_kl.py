"""Token level (paper §4): how far the fine-tuned model's first-token distribution moves from the pre-trained one.

The paper compares the two models on the *first generated token* of questions the pre-trained model already
answers (D_test-4). Full-vocabulary KL is dominated by the long tail, so it keeps only the fine-tuned model's
top-k tokens, gathers the pre-trained logits at the same ids, re-normalises both with a softmax and takes
KL(p || p') (Figure 3).

The examples (§4.1, "Data Selection"): for each fact of D_test-4, the mapping template of its relation with the
highest success rate in the probe, kept only when the pre-trained model's greedy completion of that template
starts with the answer ("answers appear near the beginning": within ``answer_within_words`` words).
``select_examples`` picks them once per pre-trained model; ``first_token_logits_of`` gives any model's logits on
them; ``renormalized_kl`` compares two sets of logits.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .infra.errors import SftnbError


def renormalized_kl(finetuned_logits: torch.Tensor, base_logits: torch.Tensor, k: int = 10) -> torch.Tensor:
    """KL(p || p') per example over the fine-tuned model's top-k tokens, both re-normalised (paper §4.1).

    finetuned_logits, base_logits: [..., V] logits of the first generated position (any float dtype).
    Returns [...] float32 (float64 if the inputs are float64). Adding a constant to either set of logits
    changes nothing, since each side goes through its own log-softmax over the k gathered ids.
    """
    if finetuned_logits.shape != base_logits.shape:
        raise SftnbError(f"renormalized_kl: logits shapes differ: {tuple(finetuned_logits.shape)} vs "
                         f"{tuple(base_logits.shape)}")
    if finetuned_logits.ndim == 0:
        raise SftnbError("renormalized_kl: logits need a vocabulary dimension")
    vocab = finetuned_logits.shape[-1]
    if not 1 <= k <= vocab:
        raise SftnbError(f"renormalized_kl: k={k} must lie in [1, vocabulary size {vocab}]")
    dtype = torch.float64 if finetuned_logits.dtype == torch.float64 else torch.float32
    ft = finetuned_logits.to(dtype)
    top_ft, ids = ft.topk(k, dim=-1)
    top_base = base_logits.to(dtype).gather(-1, ids)
    logp = top_ft.log_softmax(-1)
    logq = top_base.log_softmax(-1)
    return (logp.exp() * (logp - logq)).sum(-1).clamp_min(0.0)   # clamp: rounding can give -1e-9


def topk_table(finetuned_logits: torch.Tensor, base_logits: torch.Tensor, tokenizer, k: int = 10):
    """Figure 3's data for one question: the fine-tuned top-k tokens with both models' probabilities, over the
    whole vocabulary and re-normalised over the k ids."""
    import pandas as pd

    ft = finetuned_logits.float().reshape(-1)
    base = base_logits.float().reshape(-1)
    probs_ft, ids = ft.softmax(-1).topk(k)
    probs_base = base.softmax(-1)[ids]
    return pd.DataFrame({
        "token": [tokenizer.decode([int(i)]) for i in ids],
        "token_id": ids.tolist(),
        "p_finetuned": probs_ft.tolist(),
        "p_pretrained": probs_base.tolist(),
        "p_finetuned_renorm": ft[ids].softmax(-1).tolist(),
        "p_pretrained_renorm": base[ids].softmax(-1).tolist(),
    })


# --------------------------------------------------------------------------------------------- §4.1 examples
def select_examples(model, tokenizer, facts: Sequence, relations: dict, best_templates: dict[str, int],
                    answer_within_words: int, max_examples: int | None = None, max_new_tokens: int = 16,
                    batch_tokens: int = 16384, progress: bool = False) -> list[dict]:
    """The §4.1 examples among ``facts`` (D_test-4): per fact, its relation's best template, kept when the
    pre-trained model's greedy completion has the answer within ``answer_within_words`` words.
    Returns dicts with key, prompt, answers and the pre-trained output, in the order of ``facts``."""
    from .evaluate import complete
    from .data.matching import answer_position

    texts = [relations[f.relation].mapping(best_templates.get(f.relation, 0), f.subject) for f in facts]
    outs = complete(model, tokenizer, texts, max_new_tokens, batch_tokens, progress, desc="§4.1 examples")
    keep = [i for i, (f, o) in enumerate(zip(facts, outs))
            if (pos := answer_position(f.answers, o)) is not None and pos <= answer_within_words]
    if max_examples:
        keep = keep[:max_examples]
    return [{"key": facts[i].key, "prompt": texts[i], "answers": list(facts[i].answers), "base_output": outs[i]}
            for i in keep]


def first_token_logits_of(model, tokenizer, prompts: Sequence[str], batch_tokens: int = 16384) -> torch.Tensor:
    """[N, V] float32 (CPU) next-token logits of ``model`` after each prompt text (the model's prompt start
    first, as everywhere)."""
    from .lm.scoring import first_token_logits
    from .lm.models import encode_prompt

    if not prompts:
        return torch.zeros(0, model.config.get_text_config().vocab_size)
    return first_token_logits(model, [encode_prompt(tokenizer, p) for p in prompts], batch_tokens=batch_tokens)
