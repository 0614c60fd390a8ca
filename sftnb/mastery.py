"""Knowledge mastery (paper §3.1, §3.3, App. F.1): how well the pre-trained model already knows each fact.

For a fact and each of its relation's N_map mapping templates ("{subject} is located in"), sample N_sample
completions at temperature 0.7; R = the share of the N_map x N_sample completions containing the answer (or a
synonym). Category 0 if R = 0, else i for R in ((i-1)/4, i/4].

``method="likelihood"`` (beyond the paper) replaces the samples by one teacher-forced pass per (fact, template):
the probability, at the sampling temperature, that the completion *begins* with an answer alias. Its R is
rounded to the sampling grid (multiples of 1/(N_map x N_sample)), i.e. it predicts the expected success count,
so that category 0 keeps its meaning ("no sample would have succeeded"). It misses answers that come later in
a completion ("the city of Paris"), so it reads low; notebook 01 reports its agreement with sampling.
"""
from __future__ import annotations

import hashlib
import math
from typing import Sequence

import numpy as np
import pandas as pd

from .config import ProbeConfig
from .facts import Fact
from .errors import SftnbError
from .generation import continuation_logprobs, decode, generate
from .matching import answer_in_text, expand_answers, normalize
from .models import encode_prompt, stop_token_ids
from .relations import Relation

CATEGORIES = (0, 1, 2, 3, 4)


def category(r: float) -> int:
    """0 if R = 0, else i for R in ((i-1)/4, i/4] (paper §3.3)."""
    if not 0.0 <= r <= 1.0:
        raise ValueError(f"mastery R must lie in [0, 1], got {r}")
    return 0 if r == 0 else min(4, math.ceil(r * 4 - 1e-12))


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


# --------------------------------------------------------------------------------------------- estimators
def _rates_sampling(model, tokenizer, facts, relations, cfg: ProbeConfig, batch_tokens, progress, eos_ids):
    prompts, owners = [], []
    for fi, f in enumerate(facts):
        for text in probe_texts(relations[f.relation], f.subject, cfg.n_templates):
            prompts.append(encode_prompt(tokenizer, text))
            owners.append(fi)
    outs = generate(model, prompts, n=cfg.n_samples, temperature=cfg.temperature,
                    max_new_tokens=cfg.max_new_tokens, eos_token_ids=eos_ids, pad_token_id=tokenizer.pad_token_id,
                    seed=cfg.seed, batch_tokens=batch_tokens, progress=progress, desc="probe (sampling)")
    texts = decode(tokenizer, outs)
    rates: list[list[float]] = [[] for _ in facts]
    for fi, samples in zip(owners, texts):
        ans = facts[fi].answers
        rates[fi].append(sum(answer_in_text(ans, s) for s in samples) / len(samples))
    return rates


def _rates_likelihood(model, tokenizer, facts, relations, cfg: ProbeConfig, batch_tokens, progress):
    prompts, conts, owners = [], [], []
    for fi, f in enumerate(facts):
        cands = [tokenizer.encode(" " + a, add_special_tokens=False) for a in minimal_aliases(f.answers)]
        cands = [c[:cfg.max_new_tokens] for c in cands if c]
        for text in probe_texts(relations[f.relation], f.subject, cfg.n_templates):
            prompts.append(encode_prompt(tokenizer, text))
            conts.append(cands)
            owners.append(fi)
    logps = continuation_logprobs(model, prompts, conts, temperature=cfg.temperature, batch_tokens=batch_tokens,
                                  progress=progress)
    rates: list[list[float]] = [[] for _ in facts]
    for fi, lp in zip(owners, logps):
        rates[fi].append(min(1.0, float(sum(math.exp(x) for x in lp))))
    return rates


def probe(model, tokenizer, facts: Sequence[Fact], relations: dict[str, Relation], cfg: ProbeConfig,
          method: str | None = None, batch_tokens: int = 16384, progress: bool = True,
          eos_ids: Sequence[int] | None = None) -> pd.DataFrame:
    """One row per fact: key, relation, subject, answers, split, domain, R, category, template_rates."""
    method = method or cfg.method
    if not facts:
        return pd.DataFrame(columns=["key", "relation", "subject", "answers", "split", "domain", "R", "category",
                                     "template_rates"])
    missing = {f.relation for f in facts} - set(relations)
    if missing:
        raise SftnbError(f"no mapping templates for relation(s) {', '.join(sorted(missing))}")
    if method == "sampling":
        rates = _rates_sampling(model, tokenizer, facts, relations, cfg, batch_tokens, progress,
                                tuple(eos_ids or stop_token_ids(tokenizer)))
        grid = None
    elif method == "likelihood":
        rates = _rates_likelihood(model, tokenizer, facts, relations, cfg, batch_tokens, progress)
        grid = cfg.n_templates * cfg.n_samples
    else:
        raise SftnbError(f"unknown probe method {method!r} (sampling or likelihood)")
    rows = []
    for f, rs in zip(facts, rates):
        r = float(np.mean(rs))
        if grid is not None:   # expected successes among N_map x N_sample samples, on the sampling grid
            r = round(r * len(rs) * cfg.n_samples) / (len(rs) * cfg.n_samples)
        rows.append({"key": f.key, "relation": f.relation, "subject": f.subject, "answers": list(f.answers),
                     "split": f.split, "domain": f.domain, "R": r, "category": category(r),
                     "template_rates": [round(x, 6) for x in rs]})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------- with the store
def facts_digest(facts: Sequence[Fact]) -> str:
    h = hashlib.sha256()
    for f in facts:
        h.update((f.key + "\t" + "|".join(f.answers) + "\n").encode())
    return h.hexdigest()


def probe_stored(store, model, tokenizer, model_id: str, facts: Sequence[Fact], relations: dict[str, Relation],
                 cfg: ProbeConfig, method: str | None = None, batch_tokens: int = 16384,
                 progress: bool = True, label: str = "probe", dtype: str = "") -> pd.DataFrame:
    """``probe`` in chunks of ``cfg.chunk_facts`` facts, each a store unit: an interrupted probe resumes at the
    first unfinished chunk. ``model`` may be a zero-argument callable, called only if a chunk must be computed.
    ``dtype`` (the inference dtype, e.g. "torch.bfloat16") is part of each unit's key: it changes the samples."""
    method = method or cfg.method
    frames = []
    spec_cfg = cfg.model_dump(exclude={"chunk_facts", "agreement_facts", "method"})
    chunks = [facts[i:i + cfg.chunk_facts] for i in range(0, len(facts), cfg.chunk_facts)]
    for ci, chunk in enumerate(chunks):
        spec = {"model": model_id, "method": method, "probe": spec_cfg, "facts": facts_digest(chunk),
                "templates": {r: relations[r].mapping_templates[:cfg.n_templates]
                              for r in sorted({f.relation for f in chunk})}, "dtype": dtype}

        def compute(tmp, chunk=chunk):
            m = model() if callable(model) and not hasattr(model, "forward") else model
            df = probe(m, tokenizer, chunk, relations, cfg, method, batch_tokens, progress)
            df.to_json(tmp / "probe.jsonl", orient="records", lines=True)
            return {"facts": len(df), "categories": df["category"].value_counts().sort_index().to_dict()}

        unit = store.unit("probe", spec, f"{label}-{method}-{ci:03d}")
        unit.compute(compute)
        frames.append(pd.read_json(unit.file("probe.jsonl"), orient="records", lines=True, dtype=False))
    if not frames:
        return probe(None, tokenizer, [], relations, cfg, method)
    return pd.concat(frames, ignore_index=True)


def split_by_category(facts: Sequence[Fact], probed: pd.DataFrame) -> dict[int, list[Fact]]:
    """D_x-0 ... D_x-4: the facts of each mastery category, in the original order."""
    cat = dict(zip(probed["key"], probed["category"]))
    return {c: [f for f in facts if cat.get(f.key) == c] for c in CATEGORIES}


def category_counts(probes: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Table 1 / Table 8: facts per mastery category (rows) for each named set (columns)."""
    table = pd.DataFrame({name: df["category"].value_counts().reindex(CATEGORIES, fill_value=0)
                          for name, df in probes.items()})
    table.index.name = "category"
    table.loc["total"] = table.sum()
    return table.astype(int)


def best_templates(probed: pd.DataFrame) -> dict[str, int]:
    """Per relation, the mapping template with the highest mean success rate (used by §4.1)."""
    best = {}
    for rel, grp in probed.groupby("relation"):
        rates = np.array(grp["template_rates"].tolist(), dtype=float)
        best[rel] = int(rates.mean(0).argmax())
    return best


def agreement(estimate: pd.DataFrame, reference: pd.DataFrame) -> tuple[pd.DataFrame, float, float]:
    """Category confusion matrix (rows: reference = sampling), Spearman rank correlation of R, exact agreement."""
    from scipy.stats import spearmanr

    m = reference[["key", "R", "category"]].merge(estimate[["key", "R", "category"]], on="key",
                                                  suffixes=("_sampling", "_estimate"))
    conf = pd.crosstab(m["category_sampling"], m["category_estimate"]).reindex(
        index=CATEGORIES, columns=CATEGORIES, fill_value=0)
    conf.index.name, conf.columns.name = "sampling (rows) / estimate (columns)", None
    # Spearman's rho is undefined for fewer than three facts or a constant column (e.g. all R = 0).
    defined = len(m) > 2 and m["R_sampling"].nunique() > 1 and m["R_estimate"].nunique() > 1
    rho = float(spearmanr(m["R_sampling"], m["R_estimate"]).statistic) if defined else math.nan
    exact = float((m["category_sampling"] == m["category_estimate"]).mean()) if len(m) else math.nan
    return conf, rho, exact
