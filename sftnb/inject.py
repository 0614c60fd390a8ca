"""A model organism for the paper: a pre-trained model whose knowledge is *set* by the experimenter.

The paper splits facts by how well the pre-trained model knows them (5 mastery categories). A small model knows
few facts with confidence, so most categories are empty. Knowledge-injection studies (synthetic biographies on
knowledge storage; Gekhman et al. 2024 on fine-tuning on unknown facts) instead *give* a model facts by continued
pre-training with controlled exposure. ``inject`` does that:

* a seeded subset of facts gets an exposure count each (default 0, 1, 2, 4, 8, 16), balanced across relations
  and counts, from D_train and D_test alike (so D_test-4 holds test facts the model knows well);
* every exposure is one plain declarative statement ("Citizens of France call Paris their capital."), the
  template drawn from a pool per relation (``resources/injection_statements.json`` or the params) that shares
  no wording with the probe's mapping templates or the QA question, so the probe then measures recall, not the
  copying of a template; the subject comes before the answer (a causal LM reading "A ... B" learns A -> B);
* the loss is the causal-LM loss on every statement token (no QA markers), through the same training loop as
  SFT (``sftnb.sft.train_encoded``), one pass over the shuffled statements: each fact is seen exactly its count
  of times.

``exposure_schedule`` is the exact plan (tested), ``inject_model`` trains, ``build_injected`` makes it a store
unit whose output is a Hugging Face folder (``models[].path`` and ``sftnb restore --base`` accept it).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Sequence

from .infra.errors import SftnbError
from .data.facts import Fact
from .data.relations import Relation

IGNORE = -100


@lru_cache(maxsize=1)
def default_templates() -> dict[str, tuple[str, ...]]:
    raw = json.loads(resources.files("sftnb.resources").joinpath("injection_statements.json")
                     .read_text(encoding="utf-8"))
    return {r: tuple(ts) for r, ts in raw["relations"].items()}


def render(template: str, fact: Fact) -> str:
    return template.replace("{subject}", fact.subject).replace("{answer}", fact.answers[0])


def check_templates(templates: dict[str, Sequence[str]], relations: dict[str, Relation]) -> None:
    """Every template has {subject} before {answer}, and no probe prompt or question of its relation occurs inside
    it (checked on a rendered example, case-insensitively). One line naming the first offender otherwise."""
    probe = Fact("x", "Xyzzy Qwerton", ("Plughville",), "train", "in", "")
    for rel, pool in templates.items():
        if rel not in relations:
            raise SftnbError(f"inject.templates: unknown relation {rel!r}")
        if not pool:
            raise SftnbError(f"inject.templates: relation {rel!r} has no statement template")
        r = relations[rel]
        for t in pool:
            if "{subject}" not in t or "{answer}" not in t or t.index("{subject}") > t.index("{answer}"):
                raise SftnbError(f"inject.templates[{rel}]: {t!r} needs {{subject}} before {{answer}}")
            text = render(t, probe).lower()
            for shared in [r.mapping(i, probe.subject) for i in range(len(r.mapping_templates))] + \
                    [r.question(probe.subject)]:
                if shared.lower() in text:
                    raise SftnbError(f"inject.templates[{rel}]: {t!r} contains the probe/QA text {shared!r}")


# --------------------------------------------------------------------------------------------- the plan
@dataclass(frozen=True)
class Exposure:
    fact: Fact
    count: int


def _spread_answers(facts: list[Fact], rng: random.Random) -> list[Fact]:
    """A seeded order in which answers repeat as late as possible (every answer once, then every answer twice,
    ...): picking the first k facts then teaches k different answers, not a prior over a few frequent ones."""
    shuffled = rng.sample(facts, len(facts))
    seen: dict[str, int] = {}
    rank = []
    for f in shuffled:
        seen[f.answers[0]] = seen.get(f.answers[0], 0) + 1
        rank.append(seen[f.answers[0]])
    return [f for _, f in sorted(zip(rank, shuffled), key=lambda x: x[0])]


def assign_exposures(facts: Sequence[Fact], exposures: Sequence[int], per_count: int | Sequence[int],
                     seed: int) -> list[Exposure]:
    """``per_count`` facts for each exposure count (one number for all, or one per count), balanced across
    relations: facts are drawn round-robin over the relations in a seeded order, and within each relation the
    counts are dealt round-robin too (a count whose quota is full is skipped), so every relation holds (nearly) its
    share of every count. Within a relation, facts with answers not drawn yet come first (``_spread_answers``):
    injecting many facts with one answer ("... is in India") would teach the model to guess that answer, and
    raise R on facts it was never shown."""
    exposures = list(exposures)
    quota = [per_count] * len(exposures) if isinstance(per_count, int) else list(per_count)
    if len(quota) != len(exposures):
        raise SftnbError(f"inject: {len(quota)} fact counts for {len(exposures)} exposure counts")
    need = sum(quota)
    if need > len(facts):
        raise SftnbError(f"inject: exposure counts {exposures} x facts {quota} need {need} facts, "
                         f"the source has {len(facts)}")
    rng = random.Random(seed)
    by_rel: dict[str, list[Fact]] = {}
    for f in facts:
        by_rel.setdefault(f.relation, []).append(f)
    pools = {r: _spread_answers(v, rng)[::-1] for r, v in sorted(by_rel.items())}    # pop() takes from the end
    picked: dict[str, list[Fact]] = {r: [] for r in pools}
    total = 0
    while total < need:
        for r in [r for r in sorted(pools) if pools[r]]:
            if total == need:
                break
            picked[r].append(pools[r].pop())
            total += 1
    # deal counts across all relations' facts: each fact gets the count that is furthest behind its quota
    # (fraction dealt; ties: the earlier count), so every relation holds every count in proportion. With equal
    # quotas this is plain round-robin (0, 1, 2, ..., 0, 1, 2, ...).
    out, dealt = [], dict.fromkeys(exposures, 0)
    for r in sorted(picked):
        for f in picked[r]:
            c = min((c for c, q in zip(exposures, quota) if dealt[c] < q),
                    key=lambda c: Fraction(dealt[c], quota[exposures.index(c)]))
            dealt[c] += 1
            out.append(Exposure(f, c))
    return out


def exposure_schedule(plan: Sequence[Exposure], templates: dict[str, Sequence[str]], seed: int) -> list[str]:
    """The statements of one injection, in training order: fact f appears exactly ``count`` times, each time
    with the next template of a per-fact seeded shuffle of its relation's pool (repeats use different wordings
    while the pool lasts); the whole list is shuffled with ``seed`` so repeats are spread over training."""
    rng = random.Random(seed)
    out = []
    for e in plan:
        pool = list(templates[e.fact.relation])
        order = random.Random(f"{seed}:{e.fact.key}").sample(range(len(pool)), len(pool))
        out += [render(pool[order[i % len(pool)]], e.fact) for i in range(e.count)]
    rng.shuffle(out)
    return out


def encode_statement(tokenizer, text: str) -> tuple[list[int], list[int]]:
    """(input_ids, labels): the model's prompt start, then the statement; the loss covers every statement token."""
    from .lm.models import encode_prompt

    ids = encode_prompt(tokenizer, text)
    start = len(getattr(tokenizer, "sftnb_prompt_start", ()))
    return ids, [IGNORE] * start + ids[start:]


def length_grouped_order(lengths: Sequence[int], batch_size: int, seed: int) -> list[int]:
    """An order of the statements in which consecutive batches hold statements of similar token length:
    transformers' ``get_length_grouped_indices`` (a seeded permutation cut into windows of up to 50 batches, each
    sorted by length), what its Trainer does with ``group_by_length``. Repeats of a fact stay spread over
    training: a window is ~1/(number of windows) of the schedule."""
    import torch
    from transformers.trainer_pt_utils import get_length_grouped_indices

    if len(lengths) < 2 * batch_size:
        return list(range(len(lengths)))
    return [int(i) for i in get_length_grouped_indices(list(lengths), batch_size,
                                                       generator=torch.Generator().manual_seed(seed))]


def padding_fraction(lengths: Sequence[int], order: Sequence[int], batch_size: int) -> float:
    """The share of a run's batch cells that are padding when ``order`` is cut into batches of ``batch_size``."""
    cells = real = 0
    for i in range(0, len(order), batch_size):
        batch = [lengths[j] for j in order[i:i + batch_size]]
        cells, real = cells + max(batch) * len(batch), real + sum(batch)
    return 1 - real / max(cells, 1)


def inject_model(model, tokenizer, statements: Sequence[str], train_cfg, seed: int, progress: bool = True,
                 length_grouped: bool = False):
    """Continued pre-training on ``statements`` in the given order (one pass), in place; returns the report.
    ``length_grouped``: batches of statements of similar length instead (``length_grouped_order``)."""
    from .sft import train_encoded

    if not statements:
        raise SftnbError("inject: no statement to train on (every exposure count is 0?)")
    encoded = [encode_statement(tokenizer, s) for s in statements]
    if length_grouped:
        encoded = [encoded[i] for i in length_grouped_order([len(ids) for ids, _ in encoded],
                                                            train_cfg.batch_size, seed)]
    # the schedule is already shuffled: keep its order (seeded shuffles inside the loop would be a second one)
    return train_encoded(model, tokenizer, encoded, train_cfg, seed, progress=progress, desc="inject",
                         shuffle=False)


def plan_table(plan: Sequence[Exposure]):
    """The injected facts with their exposure counts (one row each)."""
    import pandas as pd

    return pd.DataFrame([{"relation": e.fact.relation, "subject": e.fact.subject,
                          "answer": e.fact.answers[0], "split": e.fact.split, "exposure": e.count} for e in plan])


def write_folder(model, tokenizer, folder: Path, plan: Sequence[Exposure], report) -> None:
    """The injected model as a Hugging Face folder, with the plan (which fact, how often) beside the weights."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    plan_table(plan).to_csv(folder / "injection_plan.csv", index=False)
    (folder / "injection_report.json").write_text(json.dumps(report.to_dict(), indent=1))


def build(store, base_path: str, base_id: str, plan: Sequence[Exposure], templates: dict[str, Sequence[str]],
          train_cfg, seed: int, prompt_start: str = "auto", device: str = "auto", dtype="float32",
          progress: bool = True, label: str = "inject", length_grouped: bool = False):
    """The injection as a store unit (resumable, deterministic for its seed): its folder's ``model/`` is the
    injected model. ``base_id`` identifies the base weights in the unit's key; ``train_cfg`` is an SFTConfig
    carrying the injection's optimiser settings."""
    from .lm.models import load_model

    used = {e.fact.relation for e in plan}
    missing = sorted(used - set(templates))
    if missing:
        raise SftnbError(f"inject: no statement template for relation(s) {', '.join(missing)}")
    spec = {"base": base_id, "templates": {r: list(templates[r]) for r in sorted(used)}, "seed": seed,
            # fsdp_ranks: added after these units were stored, and changes no result
            "train": train_cfg.model_dump(exclude={"lora", "fsdp_ranks"}), "prompt_start": prompt_start,
            "dtype": str(dtype), "plan": [(e.fact.key, e.count) for e in plan]}
    if length_grouped:                      # another batch order: another model (keys without it stay as they were)
        spec["length_grouped"] = True

    def compute(tmp):
        model, tok = load_model(base_path, device=device, dtype=dtype, prompt_start=prompt_start)
        statements = exposure_schedule(plan, templates, seed)
        report = inject_model(model, tok, statements, train_cfg, seed, progress, length_grouped)
        write_folder(model, tok, tmp / "model", plan, report)
        return {"statements": len(statements), "facts": len(plan), "train": report.to_dict()}

    unit = store.unit("inject", spec, label)
    unit.compute(compute)
    return unit


def injection_plan(train: Sequence[Fact], test: Sequence[Fact], inject_cfg,
                   skip_empty_splits: bool = False) -> list[Exposure]:
    """Which D_train and D_test facts the testbed model is shown, and how often: ``facts_per_exposure`` facts of
    each split (of ``inject_cfg.relations`` when set) per exposure count, seeded by ``seed`` (train) and ``seed + 1``
    (test). ``skip_empty_splits``: a split without facts (a facts file of test facts only) is left out, not an
    error."""
    ic = inject_cfg
    keep = (lambda f: f.relation in ic.relations) if ic.relations else (lambda f: True)
    plan = []
    for split, facts, offset in (("train", train, 0), ("test", test, 1)):
        pool = [f for f in facts if keep(f)]
        if pool or not skip_empty_splits:
            plan += assign_exposures(pool, ic.exposures, ic.facts_per_exposure(split), ic.seed + offset)
    return plan


def inject_into_folder(base_path: str, facts: Sequence[Fact], inject_cfg, out: Path, device: str = "auto",
                       dtype="float32", source: str = "facts") -> dict:
    """``sftnb inject``: the base model after continued pre-training on statements of ``facts`` (the default
    templates; SFT settings fp32, the injection's optimiser), as a Hugging Face folder at ``out`` (replaced
    atomically). Resumable: the work is a store unit in a hidden folder beside ``out``, removed once ``out`` is
    written. Returns the unit's result (facts, statements, training report); ``source`` names the facts in
    errors."""
    import shutil

    from .infra.atomic import atomic_folder
    from .config import SFTConfig
    from .lm.models import model_fingerprint
    from .data.relations import all_relations
    from .infra.store import Store

    templates = {r: list(t) for r, t in default_templates().items()}
    facts = [f for f in facts if f.relation in templates]
    if not facts:
        raise SftnbError(f"{source}: no facts of a relation with statement templates ({', '.join(sorted(templates))})")
    plan = injection_plan([f for f in facts if f.split == "train"], [f for f in facts if f.split == "test"],
                          inject_cfg, skip_empty_splits=True)
    if not plan:
        raise SftnbError(f"{source}: no train or test facts to inject")
    check_templates({r: templates[r] for r in {e.fact.relation for e in plan}}, all_relations())
    work = out.parent / f".{out.name}.units"
    unit = build(Store(work), base_path, model_fingerprint(base_path), plan, templates,
                 train_config(SFTConfig(precision="fp32"), inject_cfg), inject_cfg.seed, device=device, dtype=dtype,
                 label="cli")
    result = unit.result()
    with atomic_folder(out, if_exists="replace") as tmp:
        shutil.copytree(unit.file("model"), tmp, dirs_exist_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    return result


def train_config(sft_cfg, inject_cfg):
    """The SFT config with the injection's optimiser settings (one pass over the statements)."""
    return sft_cfg.model_copy(update={
        "learning_rate": inject_cfg.learning_rate, "batch_size": inject_cfg.batch_size, "epochs": 1,
        "scheduler": inject_cfg.scheduler, "warmup_ratio": inject_cfg.warmup_ratio,
        "weight_decay": inject_cfg.weight_decay, "max_grad_norm": inject_cfg.max_grad_norm})


__all__ = ["default_templates", "check_templates", "Exposure", "assign_exposures", "exposure_schedule",
           "encode_statement", "length_grouped_order", "padding_fraction", "inject_model", "plan_table",
           "write_folder", "render", "build", "train_config", "injection_plan", "inject_into_folder", "build_testbed"]


# --------------------------------------------------------------------------------------------- a run's testbed
def build_testbed(store, mc, sets: dict[str, list[Fact]], relations: dict[str, Relation], sft_cfg, device: str,
                  dtype, progress: bool = True):
    """The store unit that builds the testbed model of ``models[]`` entry ``mc``: ``mc.path`` after continued
    pre-training on its injection plan (``build``)."""
    from .lm.models import model_fingerprint

    ic = mc.inject
    templates = ic.templates or {r: list(t) for r, t in default_templates().items()}
    plan = injection_plan(sets["train"], sets["test"], ic)
    if not ic.allow_probe_wording:
        check_templates({r: templates[r] for r in {e.fact.relation for e in plan} if r in templates}, relations)
    return build(store, mc.path, model_fingerprint(mc.path), plan, templates, train_config(sft_cfg, ic), ic.seed,
                 mc.prompt_start, device, dtype, progress, label=mc.name, length_grouped=ic.length_grouped)
