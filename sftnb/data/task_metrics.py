"""Table 5's metrics, per example (callers average or bootstrap over examples), and the prompt each metric's task
takes (``format_prompt``).

* ``rouge``: ROUGE-1/2/L F1 from Google's ``rouge-score`` package with ``use_stemmer=True`` (Porter stemmer on
  tokens longer than 3 characters; text lower-cased, non-alphanumeric characters treated as spaces), the
  setting the XSum literature reports. ``rougeL`` is sentence-level LCS, not ``rougeLsum``: XSum summaries are
  one sentence, where the two coincide.
* ``gsm8k``: accuracy. The reference is the number after ``####`` in the answer text, commas removed, as
  GSM8K's own grader (``extract_answer`` in openai/grade-school-math) reads it; the prediction is the last
  number in the generation. Both are normalised alike ("$1,234.00" -> "1234", "+7" -> "7", "-3" kept).
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Callable, Sequence

from ..infra.errors import SftnbError


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer
    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)


def _check_lengths(predictions: Sequence, references: Sequence) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")


def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
    """Per-example ROUGE-1, ROUGE-2 and ROUGE-L F1 (fmeasure, 0..1) of each prediction against its reference.

    ``rouge_score.rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)``: lower-cased,
    non-alphanumerics as spaces, Porter-stemmed ("running" ~ "run"), as the XSum literature reports.
    ``rougeL`` is sentence-level LCS over the whole text, not ``rougeLsum`` (LCS per newline-split sentence):
    with one-sentence XSum summaries the two are the same number. An empty prediction scores 0."""
    _check_lengths(predictions, references)
    scorer = _rouge_scorer()
    out: dict[str, list[float]] = {"rouge1": [], "rouge2": [], "rougeL": []}
    for pred, ref in zip(predictions, references):
        s = scorer.score(ref, pred)                  # rouge-score's order: (target, prediction)
        for key in out:
            out[key].append(float(s[key].fmeasure))
    return out


# A number: optional sign (a "-" directly after a word or digit is a minus, not a sign: "10-3"), an optional
# "$", digits with thousands commas, an optional decimal part. A trailing "." (end of sentence) is not taken.
_NUMBER_RE = re.compile(r"(?:(?<![\w.])[-+])?\$?\d[\d,]*(?:\.\d+)?")
_ANSWER_RE = re.compile(r"#### (\-?[0-9\.\,]+)")     # openai/grade-school-math, grade_school_math/dataset.py


def _canonical_number(text: str) -> str:
    """'$1,234.00' -> '1234', '+7' -> '7', '7.50' -> '7.5', '007' -> '7', '-0' -> '0': one spelling per value."""
    s = text.strip().replace(",", "").replace("$", "").rstrip(".")
    sign = "-" if s.startswith("-") else ""
    s = s.lstrip("+-")
    whole, _, frac = s.partition(".")
    whole, frac = whole.lstrip("0") or "0", frac.rstrip("0")
    s = f"{whole}.{frac}" if frac else whole
    return "0" if s == "0" else sign + s


def gsm8k_reference(answer_text: str) -> str:
    """The reference number of a GSM8K answer: what follows "#### ", commas removed (GSM8K's ``extract_answer``),
    then normalised like predictions. A bare number ("18") is taken as is; anything else is an SftnbError."""
    m = _ANSWER_RE.search(answer_text)
    if m:
        return _canonical_number(m.group(1))
    if _NUMBER_RE.fullmatch(answer_text.strip()):
        return _canonical_number(answer_text)
    raise SftnbError(f"GSM8K answer has no '#### N' line: {answer_text[-60:]!r}")


def gsm8k_prediction(generation: str) -> str | None:
    """The last number in a generation, normalised ("so she has $1,234.00." -> "1234"); None when it has none."""
    numbers = _NUMBER_RE.findall(generation)
    return _canonical_number(numbers[-1]) if numbers else None


def gsm8k_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
    """Per-example accuracy: 1.0 when the generation's last number equals the reference answer (full GSM8K
    answer text, or a bare number), both normalised; a generation without a number scores 0."""
    _check_lengths(predictions, references)
    return {"accuracy": [float(gsm8k_prediction(p) == gsm8k_reference(r)) for p, r in zip(predictions, references)]}


METRICS: dict[str, Callable[[Sequence[str], Sequence[str]], dict[str, list[float]]]] = {
    "rouge": rouge_scores, "gsm8k": gsm8k_scores}
_COLUMNS = {"rouge": ["rouge1", "rouge2", "rougeL"], "gsm8k": ["accuracy"]}


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise SftnbError(f"unknown task metric {metric!r} (known: {', '.join(METRICS)})")
    return metric


def score(metric: str, predictions: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
    """Per-example scores of ``metric`` ("rouge" | "gsm8k"), keyed by ``metric_columns(metric)``."""
    return METRICS[check_metric(metric)](predictions, references)


def metric_columns(metric: str) -> list[str]:
    """The score names ``score(metric, ...)`` returns, in report order."""
    return list(_COLUMNS[check_metric(metric)])


def format_prompt(metric: str, text: str) -> str:
    """The prompt the model sees: an instruction for summaries; a GSM8K question needs none."""
    check_metric(metric)
    return f"Summarize in one sentence: {text}" if metric == "rouge" else text
