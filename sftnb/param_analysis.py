"""Parameter level (paper §5, App. B.2, C, E): how much SFT changed each parameter, where, and what restoring
the most-changed ones to their pre-trained values does.

Builds on the streaming engine in ``sftnb.restoration.restore`` (exact global top-k of relative change, live restore/undo)
and on the SFT grid's kept checkpoints. Every sweep is one store unit per fine-tuned model, and every function
takes the ``ModelRun`` (``sftnb.run``) of the model it analyses.

``ANALYSES`` declares them: for each, which keys a model has (``keys(run)``) and the unit of one key
(``unit(run, key)``). ``sftnb.work`` lists the units from it for the ranks of ``sftnb run``, and the notebooks
read them through the same declarations (``Analysis.results``): a new analysis is registered once, here.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from typing import Any, Callable

import pandas as pd
import torch

from .data.scales import scale_order
from .infra.errors import SftnbError
from .evaluate import stored
from .grid import RunKey
from .restoration.regions import model_regions
from .restoration.restore import Restorer

CONCENTRATION_XS = (1, 3, 5, 10, 20, 40, 60)


def kept_runs(run, seeds=None, restoring: bool = True) -> list[RunKey]:
    """Fine-tuned models with a kept checkpoint (divided data, kept scales, every seed or ``seeds``; the ones
    restored: ``restore.seeds`` if set), in grid order."""
    g, r = run.grid.config, run.cfg.restore
    if restoring and r.models is not None and run.name not in r.models:
        return []
    if restoring and seeds is None and r.seeds is not None:
        seeds = [s for s in g.seeds if s in r.seeds]
    keys = [RunKey("divided", c, s, seed) for s in g.keep_checkpoints if s in g.scales for c in g.categories
            for seed in (seeds or g.seeds) if seed in g.seeds_at(s)]
    return [k for k in keys if run.grid.training_facts(k) is not None]


def train_restored(run) -> list[RunKey]:
    """Table 6's models: the restored kept runs at ``restore.train_scales`` (None: all of them)."""
    scales = run.cfg.restore.train_scales
    return [k for k in kept_runs(run) if scales is None or k.scale in scales]


def largest_scale(keys: list[RunKey]) -> list[RunKey]:
    """The runs at the largest scale among ``keys`` ("all" counts as largest)."""
    if not keys:
        return []
    top = scale_order(k.scale for k in keys)[-1]
    return [k for k in keys if k.scale == top]


def restorer_on(run, model, what: str = "model", tuned: dict | None = None) -> Restorer:
    """A Restorer on a fine-tuned ``model`` against the pre-trained weights (``tuned``: the fine-tuned values,
    when ``model`` is only the target, see ``_restorer``). Where the model lives with them (a CPU run), it gets a
    private copy of the pre-trained region to swap with (fast, cost independent of k); on a GPU the pre-trained
    weights stay on the host and restoring copies from them."""
    base, region = run.pretrained_state(), run.cfg.restore.region
    source = tuned if tuned is not None else {n: p.detach() for n, p in model.named_parameters()}
    if all(torch.equal(source[n], base[n].to(source[n].device)) for n in base if n in source):
        raise SftnbError(f"{what}: the fine-tuned weights equal the pre-trained ones (checkpoint not loaded?)")
    names = model_regions(model).names(base, region)
    if tuned is None and run.exp.device.type == base[names[0]].device.type:
        base = {n: base[n].clone() for n in names}              # private: swap mode may write into it
    return Restorer(model, base, region=region, tuned=tuned)


def _restorer(run, key: RunKey):
    """(Restorer, the model to evaluate, tokenizer) for a fresh fine-tuned model of this grid key. Where the run
    evaluates in the training dtype (a CPU run), the Restorer works on the fine-tuned model itself. Where it
    evaluates in another (a GPU run: bf16 beside fp32 weights), the device holds one model only, the evaluation
    copy in the inference dtype, made from the kept checkpoint; the Restorer selects from the checkpoint's fp32
    values on the host (memory-mapped) and writes the cast pre-trained values into that copy: the same model,
    bit for bit, as restoring the fp32 model and casting it, without the fp32 model on the device beside it."""
    run.grid.unit(key)                          # makes sure the grid unit (and its checkpoint) exists
    tuned = None if run.exp.infer_dtype == run.exp.train_dtype else run.grid.checkpoint_state(key, "cpu")
    if tuned is None:
        model, tok, _ = run.grid.finetune(key)
        return restorer_on(run, model, key.label), model, tok
    from .lm.models import copy_model
    target = copy_model(run.template, run.exp.device, run.exp.infer_dtype, state=tuned).eval()
    tuned = {n: tuned[n] for n, _ in target.named_parameters() if n in tuned}   # a tied head is saved once
    return restorer_on(run, target, key.label, tuned=tuned), target, run.tokenizer


def _sweep_spec(run, key: RunKey, what: dict) -> dict:
    return run.grid.spec(key) | {"region": run.cfg.restore.region} | what


# --------------------------------------------------------------------------------------------- one unit each
def update_statistics(run, key: RunKey) -> dict:
    """Table 3 (concentration of Σ relative change in the top x %) and Tables 9-10 (where the top
    ``redundant_k_percent`` sit: per layer, per module type) for one fine-tuned model."""
    k = run.cfg.restore.redundant_k_percent

    def compute(tmp):
        restorer, _, _ = _restorer(run, key)
        conc = restorer.concentration(CONCENTRATION_XS)
        # the same without the pre-trained zeros, whose r = |s| / 1e-8 can hold nearly all of Σr by itself
        conc_nz = restorer.concentration(CONCENTRATION_XS, exclude_zero_base=True)
        sel = restorer.restore(k, "top")
        per_layer, per_module = restorer.distribution(sel)
        restorer.undo()
        return {"concentration": conc.to_dict(orient="list"),
                "concentration_nonzero_base": conc_nz.to_dict(orient="list"),
                "n": restorer.total, "zero_base": restorer.zero_base_count(),
                "per_layer": per_layer.to_dict(orient="list"), "per_module": per_module.to_dict(orient="list")}

    spec = _sweep_spec(run, key, {"what": "update_statistics", "k": k, "v": 2})
    return run.store.compute("param_stats", spec, compute, key.label)


def restore_sweep(run, key: RunKey, ks, strategy: str = "top", on_train: bool = False) -> dict:
    """Restore the top (bottom, random) k % for each k and evaluate in and out of domain, or on the run's own
    training set (Table 6): ``{"rows": [{"k", "per_set"}]}`` with per-fact correctness (``sweep_frame`` gives the
    accuracies). k = 0 is the fine-tuned model itself: the grid unit's own evaluation of the same sets, not a
    second one. The model is restored and undone in place."""
    facts = run.grid.training_facts(key) if on_train else None
    sample, total = run.cfg.restore.train_sample, len(facts or [])
    sampled = on_train and sample is not None and total > sample
    if sampled:                     # Table 6 on a seeded sample of the training set, in the set's own order
        keep = sorted(random.Random(f"train-sample-{key.label}").sample(range(len(facts)), sample))
        facts = [facts[i] for i in keep]

    def compute(tmp):
        unrestored = run.grid.unit(key)["per_set"]
        restorer, model, tok = _restorer(run, key)
        sets = {"train": facts} if on_train else run.eval_sets()
        restorer.prepare(ks, strategy, seed=key.seed)      # every k's threshold from one set of passes
        rows = []
        for k in [0, *ks]:
            if k == 0 and not sampled and all(n in unrestored for n in sets):
                per_set = {n: unrestored[n] for n in sets}
            elif k == 0:                 # eval.train_accuracy off (the grid has no train score), or a sample
                per_set = stored(run.evaluate(model, tok, sets))
            else:
                with restorer.restored(k, strategy, seed=key.seed):
                    per_set = stored(run.evaluate(model, tok, sets))
            rows.append({"k": k, "per_set": per_set})
        return {"rows": rows, **({"train_sample": [len(facts), total]} if sampled else {})}

    # a sample is part of the key only where it leaves facts out: unsampled sweeps keep their stored units
    spec = _sweep_spec(run, key, {"what": "restore", "ks": list(ks), "strategy": strategy, "on_train": on_train,
                                  "v": 3, **({"train_sample": sample} if sampled else {})})
    return run.store.compute("restore", spec, compute, f"{key.label}-{strategy}{'-train' if on_train else ''}")


def sweep_frame(run, sweep: dict) -> pd.DataFrame:
    """One row per k: every set's accuracy and the aggregates (``ModelRun.summarize``)."""
    return pd.DataFrame([{"k": r["k"], **run.summarize(r["per_set"])} for r in sweep["rows"]])


def layer_restore(run, key: RunKey) -> dict:
    """Table 11: in-domain evaluation after restoring every parameter of one group of decoder layers at a time:
    ``{"rows": [{"layers": "0-3", "per_set"}]}`` with per-fact correctness."""
    size = run.cfg.restore.layer_group_size

    def compute(tmp):
        restorer, model, tok = _restorer(run, key)
        n_layers = model.config.num_hidden_layers
        sets = {n: facts for n, facts in run.eval_sets().items() if n.startswith("test-")}
        rows = []
        for start in range(0, n_layers, size):
            group = list(range(start, min(start + size, n_layers)))
            with restorer.layers_restored(group):
                rows.append({"layers": f"{group[0]}-{group[-1]}", "per_set": stored(run.evaluate(model, tok, sets))})
        return {"rows": rows}

    spec = _sweep_spec(run, key, {"what": "layers", "size": size, "v": 3})
    return run.store.compute("layer_restore", spec, compute, key.label)


def task_sweep(run, task_cfg, seed: int) -> dict:
    """Table 5: fine-tune the pre-trained model on a further task (``sftnb.tasks``; the grid's SFT settings, this
    seed), then restore each k % and score the task's test set. Stores per-example scores for k = 0 (SFT alone),
    every restored k, and the pre-trained model without SFT, so every gain can be bootstrapped over the same
    examples. One store unit per (task, seed)."""
    from .config import project_root
    from .evaluate import answer_questions, inference_copy
    from .sft import resolve_precision, train
    from .data.task_metrics import score
    from .tasks import load_task

    task = load_task(task_cfg.spec(), root=project_root())
    ks = list(task_cfg.k_percents or run.cfg.restore.k_percents)
    digest = hashlib.sha256("\n".join(f"{e.prompt}\t{e.target}" for e in task.train + task.test).encode()).hexdigest()
    sft = run.cfg.sft.model_dump(exclude={"gradient_checkpointing", "strategy", "lora", "fsdp_ranks"})
    sft["precision"] = resolve_precision(sft["precision"], run.exp.device)
    sft["learning_rate"] = task_cfg.learning_rate or sft["learning_rate"]
    spec = {"model": run.model_id, "task": task_cfg.spec(), "data": digest, "sft": sft, "seed": seed, "ks": ks,
            "region": run.cfg.restore.region, "dtype": str(run.exp.train_dtype),
            "infer_dtype": str(run.exp.infer_dtype), "v": 1}

    def outputs(model, tok):
        with inference_copy(model, run.exp.infer_dtype) as m:
            outs = answer_questions(m, tok, [e.prompt for e in task.test], task.max_new_tokens,
                                    run.cfg.run.batch_tokens, run.exp.progress, desc=task.name)
        return [o.split("<|question|>")[0] for o in outs]        # a model that goes on asks itself a new question

    def scored(outs):
        return {"scores": score(task.metric, outs, [e.target for e in task.test]), "examples": outs[:3]}

    def compute(tmp):
        model, tok = run.pretrained()
        rows = [{"k": "pre-SFT", **scored(outputs(model, tok))}]
        report = train(model, tok, [(e.prompt, e.target) for e in task.train], run.cfg.sft, seed,
                       learning_rate=sft["learning_rate"], progress=run.exp.progress, desc=f"sft {task.name}")
        restorer = restorer_on(run, model, task.name)
        restorer.prepare(ks)
        for k in [0, *ks]:
            if k:
                with restorer.restored(k):
                    rows.append({"k": k, **scored(outputs(model, tok))})
            else:
                rows.append({"k": 0, **scored(outputs(model, tok))})
        return {"task": task.name, "metric": task.metric, "source": task.source, "n_train": len(task.train),
                "n_test": len(task.test), "rows": rows, "train": report.to_dict()}

    return run.store.compute("task", spec, compute, f"{run.name}-{task.name}-s{seed}")


# --------------------------------------------------------------------------------------------- the declarations
@dataclass(frozen=True)
class Analysis:
    """One analysis of a model: its keys (``keys(run)``, in the order the units are computed) and the store unit
    of one key (``unit(run, key)``)."""
    name: str
    keys: Callable[[Any], list]
    unit: Callable[[Any, Any], dict]

    def results(self, run) -> dict:
        """{key: unit result} for every key of ``run``, computed or reused."""
        return {key: self.unit(run, key) for key in self.keys(run)}


def _layer_keys(run) -> list[RunKey]:
    seeds = run.cfg.restore.layer_seeds or run.grid.config.seeds[:1]
    return largest_scale(kept_runs(run, seeds))


UPDATE_STATISTICS = Analysis("update statistics (Tables 3, 9, 10; every kept model, all seeds)",
                             lambda run: kept_runs(run, restoring=False), update_statistics)
RESTORE = Analysis("restoration sweeps (Tables 4, 7; every strategy)",
                   lambda run: [(k, s) for k in kept_runs(run) for s in run.cfg.restore.strategies],
                   lambda run, ks: restore_sweep(run, ks[0], run.cfg.restore.k_percents, ks[1]))
RESTORE_TRAIN = Analysis("restoration on the training set (Table 6)",
                         lambda run: [(k, "top") for k in train_restored(run)],
                         lambda run, ks: restore_sweep(run, ks[0], run.cfg.restore.train_k_percents, "top",
                                                       on_train=True))
LAYERS = Analysis("layer groups restored (Table 11; largest kept scale)", _layer_keys, layer_restore)
TASKS = Analysis("further tasks (Table 5; the main model)",
                 lambda run: [(t.name, seed) for t in run.cfg.tasks for seed in t.seeds]
                 if run.name == run.cfg.main_model.name else [],
                 lambda run, key: task_sweep(run, next(t for t in run.cfg.tasks if t.name == key[0]), key[1]))

# what each fine-tuned model of the grid gets, in the order ``sftnb.work`` lists the units
ANALYSES = (UPDATE_STATISTICS, RESTORE, RESTORE_TRAIN, LAYERS)


def task_sweeps(run) -> dict:
    """Table 5: {(task name, seed): ``task_sweep``} for every configured task, on the main model."""
    return TASKS.results(run)


__all__ = ["Analysis", "ANALYSES", "UPDATE_STATISTICS", "RESTORE", "RESTORE_TRAIN", "LAYERS", "TASKS",
           "task_sweeps", "largest_scale", "kept_runs", "train_restored", "update_statistics", "restore_sweep",
           "sweep_frame", "layer_restore", "task_sweep", "restorer_on", "CONCENTRATION_XS"]
