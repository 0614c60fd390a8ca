"""Knowledge mastery (paper §3.1, §3.3, App. F.1): how well the pre-trained model already knows each fact.

The paper's estimator (``method: sampling``): for a fact and each of its relation's N_map mapping templates
("{subject} is located in"), sample N_sample completions of up to 32 tokens at temperature 0.7; R = the share of
the N_map x N_sample completions that contain the answer (or a synonym). Category 0 if R = 0, else i for R in
((i-1)/4, i/4]. A sample stops as soon as its text contains the answer (exactly: checked where a word has just
ended, so later tokens cannot undo the match), which changes no R and saves the rest of its tokens;
``probe.stop_at_newline`` also ends it at a line break (an approximation, off by default: answers after a line
break then do not count).

Beyond the paper, ``method: likelihood`` replaces the samples by the probability p_t that a T = 0.7 sample of
template t starts with the answer: directly (teacher-forced), or after one of the model's ``lead_ins`` most likely
first tokens (" the", " a", " located" ...: one extra decode step for all of them, ``scoring.lead_in_probs``), or
with ``lead_in_depth`` > 1 after a beam of lead-in phrases of up to that many tokens (" a landmark of": one decode
step per token). It misses answers that come later in a completion, so it reads low. ``method: calibrated`` corrects that per
relation (``sftnb.calibration``): q_t = 1 - (1 - p_t)^alpha, alpha fitted so that the relation's mean q matches the
sampled rate on a subset the run also samples. R is then the mean q_t, rounded to the sampling grid
(multiples of 1/(N_map x N_sample): the expected number of successes), so category 0 keeps its meaning.
"""
from __future__ import annotations

import hashlib
import math
from typing import Sequence

import numpy as np
import pandas as pd

from .config import ProbeConfig
from .infra.errors import SftnbError
from .data.facts import CATEGORIES, Fact
from .lm.generation import StopRule, decode, generate
from .lm.scoring import continuation_logprobs, lead_in_probs
from .data.matching import answer_in_text, expand_answers, normalize
from .lm.models import encode_prompt, stop_token_ids, word_start_tokens
from .data.relations import Relation

PROBE_COLUMNS = ["key", "relation", "subject", "answers", "split", "domain", "R", "category", "template_rates"]


def category(r: float) -> int:
    """0 if R = 0, else i for R in ((i-1)/4, i/4] (paper §3.3)."""
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"mastery R must lie in [0, 1], got {r}")
    return 0 if r == 0 else min(4, math.ceil(r * 4 - 1e-12))


def on_grid(r: float, n_draws: int) -> float:
    """An expected success rate as a sampling estimate would print it: the nearest multiple of 1/n_draws."""
    return round(min(1.0, max(0.0, r)) * n_draws) / n_draws


def probe_texts(relation: Relation, subject: str, n_templates: int) -> list[str]:
    return [relation.mapping(t, subject) for t in range(min(n_templates, len(relation.mapping_templates)))]


def minimal_aliases(answers: Sequence[str]) -> list[str]:
    """Answer aliases without those that extend another alias word-wise ("United States of America" given
    "United States"): the events "begins with A" then nest, so their probabilities can be summed."""
    aliases = sorted({a for a in expand_answers(answers) if normalize(a)}, key=lambda a: len(normalize(a)))
    keep: list[str] = []
    for a in aliases:
        na = normalize(a)
        if not any(na == normalize(k) or na.startswith(normalize(k) + " ") for k in keep):
            keep.append(a)
    return keep


def _prompts(tokenizer, facts, relations, n_templates):
    prompts, owners = [], []
    for fi, f in enumerate(facts):
        for text in probe_texts(relations[f.relation], f.subject, n_templates):
            prompts.append(encode_prompt(tokenizer, text))
            owners.append(fi)
    return prompts, owners


# --------------------------------------------------------------------------------------------- sampling
def _stops(tokenizer, cfg: ProbeConfig) -> set[int]:
    """The tokens that end a sample: EOS and the like, and with ``stop_at_newline`` every token with a line break."""
    stops = set(stop_token_ids(tokenizer))
    if cfg.stop_at_newline:
        stops |= {i for t, i in tokenizer.get_vocab().items() if "\n" in tokenizer.convert_tokens_to_string([t])}
    return stops


def _rates_sampling(model, tokenizer, facts, relations, cfg: ProbeConfig, batch_tokens, progress):
    prompts, owners = _prompts(tokenizer, facts, relations, cfg.n_templates)
    stops = _stops(tokenizer, cfg)
    rule = StopRule(word_start_tokens(tokenizer), lambda p, toks: answer_in_text(
        facts[owners[p]].answers, tokenizer.decode(toks, skip_special_tokens=True)))
    outs = generate(model, prompts, n=cfg.n_samples, temperature=cfg.temperature,
                    max_new_tokens=cfg.max_new_tokens, eos_token_ids=sorted(stops),
                    pad_token_id=tokenizer.pad_token_id, seed=cfg.seed, batch_tokens=batch_tokens,
                    progress=progress, desc="probe (sampling)", stop=rule)
    rates: list[list[float]] = [[] for _ in facts]
    for fi, samples in zip(owners, decode(tokenizer, outs)):
        rates[fi].append(sum(answer_in_text(facts[fi].answers, s) for s in samples) / len(samples))
    return rates


# --------------------------------------------------------------------------------------------- likelihood
def _rates_likelihood(model, tokenizer, facts, relations, cfg: ProbeConfig, batch_tokens, progress):
    """p_t per (fact, template): P(the sample starts with an alias) + sum over the ``lead_ins`` most likely other
    first tokens w of P(w) P(an alias starts right after w), at the sampling temperature; with ``lead_in_depth``
    > 1, w ranges over a beam of lead-in phrases of up to that many tokens (``scoring.lead_in_probs``). A lead-in
    never holds a token that ends a sample (``_stops``). A multi-token alias after w is counted as
    P(its first token | w) x P(the rest | its first token at the start)."""
    prompts, owners = _prompts(tokenizer, facts, relations, cfg.n_templates)
    spaced, bare = [], []
    for f in facts:
        aliases = minimal_aliases(f.answers)
        spaced.append([c[:cfg.max_new_tokens] for c in (tokenizer.encode(" " + a, add_special_tokens=False)
                                                        for a in aliases) if c])
        bare.append([c[:cfg.max_new_tokens] for c in (tokenizer.encode(a, add_special_tokens=False)
                                                      for a in aliases) if c])
    conts = [spaced[fi] for fi in owners]
    full = continuation_logprobs(model, prompts, conts, temperature=cfg.temperature, batch_tokens=batch_tokens,
                                 progress=progress)
    start = [math.fsum(math.exp(x) for x in lp) for lp in full]
    if cfg.lead_ins:
        # watched tokens: each alias's first token, spaced and bare (after " the" comes " Paris", after "\n" "Paris")
        watch = [[c[0] for c in spaced[fi]] + [c[0] for c in bare[fi]] for fi in owners]
        leads = lead_in_probs(model, prompts, watch, cfg.lead_ins, cfg.temperature, sorted(_stops(tokenizer, cfg)),
                              batch_tokens, tokenizer.pad_token_id, progress, depth=cfg.lead_in_depth)
        for pi, (fi, lp, li) in enumerate(zip(owners, full, leads)):
            n = len(spaced[fi])
            # P(rest of alias | its first token) from the teacher-forced pass at the start
            rest = [math.exp(lp[j]) / max(li["start"][j], 1e-30) for j in range(n)]
            rest = [min(1.0, x) for x in rest]
            after = sum(p_w * sum((row[j] + row[n + j]) * rest[j] for j in range(n))
                        for (_, p_w), row in zip(li["leads"], li["after"]))
            start[pi] += after
    rates: list[list[float]] = [[] for _ in facts]
    for fi, p in zip(owners, start):
        rates[fi].append(min(1.0, p))
    return rates


# --------------------------------------------------------------------------------------------- probing
def probe(model, tokenizer, facts: Sequence[Fact], relations: dict[str, Relation], cfg: ProbeConfig,
          method: str | None = None, batch_tokens: int = 16384, progress: bool = True) -> pd.DataFrame:
    """One row per fact: key, relation, subject, answers, split, domain, R, category, template_rates.
    ``likelihood`` rows carry the uncalibrated p_t (``sftnb.calibration`` turns them into ``calibrated`` ones)."""
    method = method or cfg.method
    if not facts:
        return pd.DataFrame(columns=PROBE_COLUMNS)
    missing = {f.relation for f in facts} - set(relations)
    if missing:
        raise SftnbError(f"no mapping templates for relation(s) {', '.join(sorted(missing))}")
    if method == "sampling":
        rates = _rates_sampling(model, tokenizer, facts, relations, cfg, batch_tokens, progress)
    elif method in ("likelihood", "calibrated"):
        rates = _rates_likelihood(model, tokenizer, facts, relations, cfg, batch_tokens, progress)
    else:
        raise SftnbError(f"unknown probe method {method!r} (sampling, likelihood or calibrated)")
    return frame(facts, rates, cfg.n_samples, on_the_grid=method != "sampling")


def frame(facts: Sequence[Fact], rates: Sequence[Sequence[float]], n_samples: int, on_the_grid: bool):
    """The probe table from per-template rates; expected rates are put on the sampling grid."""
    rows = []
    for f, rs in zip(facts, rates):
        r = float(np.mean(rs))
        if on_the_grid:
            r = on_grid(r, len(rs) * n_samples)
        rows.append({"key": f.key, "relation": f.relation, "subject": f.subject, "answers": list(f.answers),
                     "split": f.split, "domain": f.domain, "R": r, "category": category(r),
                     "template_rates": [round(float(x), 6) for x in rs]})
    return pd.DataFrame(rows, columns=PROBE_COLUMNS)


# --------------------------------------------------------------------------------------------- with the store
def facts_digest(facts: Sequence[Fact]) -> str:
    h = hashlib.sha256()
    for f in facts:
        h.update((f.key + "\t" + "|".join(f.answers) + "\n").encode())
    return h.hexdigest()


def probe_chunks(store, model, tokenizer, model_id: str, facts: Sequence[Fact], relations: dict[str, Relation],
                 cfg: ProbeConfig, method: str | None = None, batch_tokens: int = 16384,
                 progress: bool = True, label: str = "probe", dtype: str = "") -> list:
    """The store units of ``probe_stored``, one per chunk of ``cfg.chunk_facts`` facts, as zero-argument callables
    that compute (or reuse) their chunk: the units the ranks of ``sftnb run`` share one by one
    (``sftnb.infra.distributed``). Arguments as for ``probe_stored``."""
    method = "likelihood" if (method or cfg.method) == "calibrated" else (method or cfg.method)
    # what changes the numbers: sampling is seeded; a lead-in never holds a token that ends a sample
    drop = {"chunk_facts", "calibration_facts", "method"} | ({"lead_ins", "lead_in_depth"} if method == "sampling"
                                                             else {"seed"})
    if cfg.lead_in_depth == 1:          # the default: units stored before the setting existed keep their keys
        drop.add("lead_in_depth")
    spec_cfg = cfg.model_dump(exclude=drop)
    chunks = [facts[i:i + cfg.chunk_facts] for i in range(0, len(facts), cfg.chunk_facts)]
    out = []
    for ci, chunk in enumerate(chunks):
        spec = {"model": model_id, "method": method, "probe": spec_cfg, "facts": facts_digest(chunk),
                "templates": {r: relations[r].mapping_templates[:cfg.n_templates]
                              for r in sorted({f.relation for f in chunk})}, "dtype": dtype,
                "prompt_start": list(getattr(tokenizer, "sftnb_prompt_start", ()))}

        def compute(tmp, chunk=chunk):
            m = model() if callable(model) and not hasattr(model, "forward") else model
            df = probe(m, tokenizer, chunk, relations, cfg, method, batch_tokens, progress)
            df.to_json(tmp / "probe.jsonl", orient="records", lines=True)
            return {"facts": len(df), "categories": df["category"].value_counts().sort_index().to_dict()}

        unit = store.unit("probe", spec, f"{label}-{method}-{ci:03d}")
        out.append(lambda unit=unit, compute=compute: (unit.compute(compute), unit)[1])
    return out


def probe_stored(store, model, tokenizer, model_id: str, facts: Sequence[Fact], relations: dict[str, Relation],
                 cfg: ProbeConfig, method: str | None = None, batch_tokens: int = 16384,
                 progress: bool = True, label: str = "probe", dtype: str = "") -> pd.DataFrame:
    """``probe`` in chunks of ``cfg.chunk_facts`` facts, each a store unit: an interrupted probe resumes at the
    first unfinished chunk. ``model`` may be a zero-argument callable, called only if a chunk must be computed.
    ``dtype`` (the inference dtype) is part of each unit's key: it changes the numbers. A ``calibrated`` probe
    stores its uncalibrated ``likelihood`` rates (calibration is applied on top, ``sftnb.calibration``)."""
    units = [chunk() for chunk in probe_chunks(store, model, tokenizer, model_id, facts, relations, cfg, method,
                                                batch_tokens, progress, label, dtype)]
    frames = [pd.read_json(u.file("probe.jsonl"), orient="records", lines=True, dtype=False) for u in units]
    if not frames:
        return pd.DataFrame(columns=PROBE_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def split_by_category(facts: Sequence[Fact], probed: pd.DataFrame) -> dict[int, list[Fact]]:
    """D_x-0 ... D_x-4: the facts of each mastery category, in the original order."""
    cat = dict(zip(probed["key"], probed["category"]))
    return {c: [f for f in facts if cat.get(f.key) == c] for c in CATEGORIES}


def best_templates(probed: pd.DataFrame) -> dict[str, int]:
    """Per relation, the mapping template with the highest mean success rate (used by §4.1)."""
    best = {}
    for rel, grp in probed.groupby("relation"):
        rates = np.array(grp["template_rates"].tolist(), dtype=float)
        best[rel] = int(rates.mean(0).argmax())
    return best
