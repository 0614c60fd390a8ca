"""Closed-book QA testing (paper §3.3): greedy answers in the SFT prompt format, scored by containment.

Acc_test-i is the accuracy on the in-domain test facts of mastery category i. The paper's final metric is
"the mean accuracy across all test sets": Acc_test = sum_{i=0..4} Acc_test-i / 5, every category weighing the
same (likewise Acc_testood out of domain). ``paper_accuracy`` computes exactly that, and is n/a (NaN) when a
category has fewer than ``eval.min_category_facts`` test facts: averaging only the non-empty categories would
let one fact carry a fifth of the metric. ``pooled_accuracy`` is the count-weighted accuracy over all facts, a
different quantity that is always defined; tables name it apart ("Acc_test (pooled)").

Per-fact correctness is kept with every result (``pack_correct``: a string of 0/1), so that any comparison can be
bootstrapped over the same test facts (``sftnb.report.stats``).
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterable, Sequence

import torch

from .data.facts import Fact
from .lm.batching import device_of
from .lm.generation import StopRule, decode, generate
from .data.matching import answer_in_text
from .lm.models import copy_model, encode_prompt, stop_token_ids, word_start_tokens
from .sft import prompt_ids
from .data.correctness import pack_correct


@contextlib.contextmanager
def inference_copy(model, dtype: torch.dtype | None):
    """The model itself, or a temporary copy in ``dtype`` (bf16 decoding is ~4x faster on a bf16-capable CPU
    while training keeps fp32 weights). The copy is made in ``dtype`` tensor by tensor (``models.copy_model``):
    beside the model, the device holds one copy in ``dtype``, never a second full-precision one. (A caller that
    needs the model no more casts it in place instead, as ``Grid._evaluate`` does.)"""
    current = next(model.parameters()).dtype
    if dtype is None or dtype == current:
        yield model
        return
    twin = copy_model(model, device_of(model), dtype).eval()
    try:
        yield twin
    finally:
        del twin


def _greedy_texts(model, tokenizer, prompts: list[list[int]], max_new_tokens: int, batch_tokens: int,
                  progress: bool, desc: str, stop: StopRule | None = None, static: bool | str = "auto") -> list[str]:
    outs = generate(model, prompts, n=1, temperature=0.0, max_new_tokens=max_new_tokens,
                    eos_token_ids=stop_token_ids(tokenizer), pad_token_id=tokenizer.pad_token_id,
                    batch_tokens=batch_tokens, progress=progress, desc=desc, stop=stop, static=static)
    return [texts[0] for texts in decode(tokenizer, outs)]


def answer_questions(model, tokenizer, questions: Sequence[str], max_new_tokens: int = 16,
                     batch_tokens: int = 16384, progress: bool = True, desc: str = "eval",
                     answers: Sequence[Sequence[str]] | None = None, static: bool | str = "auto") -> list[str]:
    """Greedy answers to questions in the SFT format (``<|question|> ... <|answer|>``). With ``answers`` a
    completion stops once it contains its answer (the criterion cannot change after that: its output is then cut
    there, its correctness is the same)."""
    stop = None if answers is None else StopRule(word_start_tokens(tokenizer), lambda p, toks: answer_in_text(
        answers[p], tokenizer.decode(toks, skip_special_tokens=True)))
    return _greedy_texts(model, tokenizer, [prompt_ids(tokenizer, q) for q in questions], max_new_tokens,
                         batch_tokens, progress, desc, stop, static)


def complete(model, tokenizer, texts: Sequence[str], max_new_tokens: int = 16, batch_tokens: int = 16384,
             progress: bool = True, desc: str = "complete") -> list[str]:
    """Greedy completions of raw texts (the §4.1 selection completes mapping templates, not questions)."""
    return _greedy_texts(model, tokenizer, [encode_prompt(tokenizer, t) for t in texts], max_new_tokens,
                         batch_tokens, progress, desc)


def score(facts: Sequence[Fact], outputs: Sequence[str]) -> list[bool]:
    return [answer_in_text(f.answers, out) for f, out in zip(facts, outputs, strict=True)]


def evaluate_sets(model, tokenizer, sets: dict[str, Sequence[Fact]], max_new_tokens: int = 16,
                  batch_tokens: int = 16384, progress: bool = True) -> dict[str, dict]:
    """Answer every named set in one generation call; per set: accuracy, n and the per-fact correctness."""
    names = [n for n in sets if len(sets[n])]
    flat = [f for n in names for f in sets[n]]
    outputs = answer_questions(model, tokenizer, [f.question for f in flat], max_new_tokens, batch_tokens,
                               progress, answers=[f.answers for f in flat]) if flat else []
    correct = score(flat, outputs)
    out, i = {}, 0
    for n in sets:
        m = len(sets[n])
        c = correct[i:i + m]
        out[n] = {"n": m, "accuracy": (sum(c) / m) if m else math.nan, "correct": c,
                  "examples": [{"q": f.question, "out": o} for f, o in zip(sets[n][:3], outputs[i:i + 3])]}
        i += m
    return out


def paper_accuracy(results: dict[str, dict], names: Sequence[str], min_facts: int) -> float:
    """The paper's Acc_test (Acc_testood): the mean of the category accuracies of ``names`` (all five), NaN when any
    of them has fewer than ``min_facts`` facts."""
    if any(n not in results or results[n]["n"] < max(1, min_facts) for n in names):
        return math.nan
    return sum(results[n]["accuracy"] for n in names) / len(names)


def pooled_accuracy(results: dict[str, dict], names: Iterable[str]) -> float:
    """Count-weighted accuracy over every fact of the named sets (NaN when they are all empty)."""
    n = sum(results[m]["n"] for m in names if m in results)
    return sum(results[m]["accuracy"] * results[m]["n"] for m in names if m in results and results[m]["n"]) / n \
        if n else math.nan


def stored(results: dict[str, dict]) -> dict[str, dict]:
    """``evaluate_sets``' results as stored: the correctness packed, the rest as is."""
    return {n: {k: (pack_correct(v) if k == "correct" else v) for k, v in r.items()} for n, r in results.items()}
