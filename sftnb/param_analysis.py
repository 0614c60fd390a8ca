"""Parameter level (paper §5, App. B.2, C, E): how much SFT changed each parameter, where, and what restoring
the most-changed ones to their pre-trained values does.

Builds on the streaming engine in ``sftnb.restore`` (exact global top-k of relative change, live restore/undo)
and on the SFT grid's kept checkpoints. Every sweep is one store unit per fine-tuned model.
"""
from __future__ import annotations

import hashlib

import pandas as pd
import torch

from .config import scale_order
from .errors import SftnbError
from .evaluate import stored
from .grid import RunKey
from .restore import Restorer
from .select import region_names

CONCENTRATION_XS = (1, 3, 5, 10, 20, 40, 60)


def kept_runs(exp, mc=None, seeds=None, restoring: bool = True) -> list[RunKey]:
    """Fine-tuned models with a kept checkpoint (divided data, kept scales, every seed or ``seeds``; the ones
    restored: ``restore.seeds`` if set), in grid order."""
    g = exp.grid_cfg(mc)
    if exp.cfg.restore.models is not None and (mc or exp.cfg.main_model).name not in exp.cfg.restore.models \
            and restoring:
        return []
    if restoring and seeds is None and exp.cfg.restore.seeds is not None:
        seeds = [s for s in g.seeds if s in exp.cfg.restore.seeds]
    keys = [RunKey("divided", c, s, seed) for s in g.keep_checkpoints if s in g.scales for c in g.categories
            for seed in (seeds or g.seeds)]
    return [k for k in keys if exp.training_facts(k, mc) is not None]


def train_restored(exp, mc=None) -> list[RunKey]:
    """Table 6's models: the restored kept runs at ``restore.train_scales`` (None: all of them)."""
    scales = exp.cfg.restore.train_scales
    return [k for k in kept_runs(exp, mc) if scales is None or k.scale in scales]


def largest_scale(keys: list[RunKey]) -> list[RunKey]:
    """The runs at the largest scale among ``keys`` ("all" counts as largest)."""
    if not keys:
        return []
    top = scale_order(k.scale for k in keys)[-1]
    return [k for k in keys if k.scale == top]


def restorer_on(exp, model, mc=None, what: str = "model") -> Restorer:
    """A Restorer on a fine-tuned ``model`` against the pre-trained weights. Where the model lives with them (a CPU
    run), it gets a private copy of the pre-trained region to swap with (fast, cost independent of k); on a GPU
    the pre-trained weights stay on the host and restoring copies from them."""
    base = exp.pretrained_state(mc)
    if all(torch.equal(p, base[n].to(p.device)) for n, p in model.named_parameters() if n in base):
        raise SftnbError(f"{what}: the fine-tuned weights equal the pre-trained ones (checkpoint not loaded?)")
    names = region_names(base, exp.cfg.restore.region)
    if exp.device.type == base[names[0]].device.type:
        base = {n: base[n].clone() for n in names}              # private: swap mode may write into it
    return Restorer(model, base, region=exp.cfg.restore.region)


def _restorer(exp, key: RunKey, mc=None):
    """A Restorer on a fresh fine-tuned model of this grid key (``restorer_on``), with the model and tokenizer."""
    exp.run_unit(key, mc)                       # makes sure the grid unit (and its checkpoint) exists
    model, tok, _ = exp.finetune(key, mc)
    return restorer_on(exp, model, mc, key.label), model, tok


def _sweep_spec(exp, key: RunKey, mc, what: dict) -> dict:
    return exp.unit_spec(key, mc) | {"region": exp.cfg.restore.region} | what


def update_statistics(exp, key: RunKey, mc=None) -> dict:
    """Table 3 (concentration of Σ relative change in the top x %) and Tables 9-10 (where the top
    ``redundant_k_percent`` sit: per layer, per module type) for one fine-tuned model."""
    k = exp.cfg.restore.redundant_k_percent

    def compute(tmp):
        restorer, _, _ = _restorer(exp, key, mc)
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

    spec = _sweep_spec(exp, key, mc, {"what": "update_statistics", "k": k, "v": 2})
    return exp.store.compute("param_stats", spec, compute, key.label)


def restore_sweep(exp, key: RunKey, ks, strategy: str = "top", on_train: bool = False,
                  mc=None) -> dict:
    """Restore the top (bottom, random) k % for each k and evaluate in and out of domain, or on the run's own
    training set (Table 6): ``{"rows": [{"k", "per_set"}]}`` with per-fact correctness (``sweep_frame`` gives the
    accuracies). k = 0 is the fine-tuned model itself: the grid unit's own evaluation of the same sets, not a
    second one. The model is restored and undone in place."""
    def compute(tmp):
        unrestored = exp.run_unit(key, mc)["per_set"]
        restorer, model, tok = _restorer(exp, key, mc)
        sets = {"train": exp.training_facts(key, mc)} if on_train else exp.eval_sets(mc)
        restorer.prepare(ks, strategy, seed=key.seed)      # every k's threshold from one set of passes
        rows = []
        for k in [0, *ks]:
            if k == 0 and all(n in unrestored for n in sets):
                per_set = {n: unrestored[n] for n in sets}
            elif k == 0:                                   # eval.train_accuracy off: the grid has no train score
                per_set = stored(exp.evaluate(model, tok, sets))
            else:
                with restorer.restored(k, strategy, seed=key.seed):
                    per_set = stored(exp.evaluate(model, tok, sets))
            rows.append({"k": k, "per_set": per_set})
        return {"rows": rows}

    spec = _sweep_spec(exp, key, mc, {"what": "restore", "ks": list(ks), "strategy": strategy,
                                      "on_train": on_train, "v": 3})
    return exp.store.compute("restore", spec, compute, f"{key.label}-{strategy}{'-train' if on_train else ''}")


def sweep_frame(exp, sweep: dict) -> pd.DataFrame:
    """One row per k: every set's accuracy and the aggregates (``Experiment.summarize``)."""
    return pd.DataFrame([{"k": r["k"], **exp.summarize(r["per_set"])} for r in sweep["rows"]])


def layer_restore(exp, key: RunKey, mc=None) -> dict:
    """Table 11: in-domain evaluation after restoring every parameter of one group of decoder layers at a time:
    ``{"rows": [{"layers": "0-3", "per_set"}]}`` with per-fact correctness."""
    def compute(tmp):
        restorer, model, tok = _restorer(exp, key, mc)
        n_layers = model.config.num_hidden_layers
        size = exp.cfg.restore.layer_group_size
        sets = {n: facts for n, facts in exp.eval_sets(mc).items() if n.startswith("test-")}
        rows = []
        for start in range(0, n_layers, size):
            group = list(range(start, min(start + size, n_layers)))
            with restorer.layers_restored(group):
                rows.append({"layers": f"{group[0]}-{group[-1]}", "per_set": stored(exp.evaluate(model, tok, sets))})
        return {"rows": rows}

    spec = _sweep_spec(exp, key, mc, {"what": "layers", "size": exp.cfg.restore.layer_group_size, "v": 3})
    return exp.store.compute("layer_restore", spec, compute, key.label)


def task_sweep(exp, task_cfg, seed: int, mc=None) -> dict:
    """Table 5: fine-tune the pre-trained model on a further task (``sftnb.tasks``; the grid's SFT settings, this
    seed), then restore each k % and score the task's test set. Stores per-example scores for k = 0 (SFT alone),
    every restored k, and the pre-trained model without SFT, so every gain can be bootstrapped over the same
    examples. One store unit per (task, seed)."""
    from .config import project_root
    from .evaluate import answer_questions, inference_copy
    from .sft import resolve_precision, train
    from .task_scoring import score
    from .tasks import load_task

    mc = mc or exp.cfg.main_model
    task = load_task(task_cfg.spec(), root=project_root())
    ks = list(task_cfg.k_percents or exp.cfg.restore.k_percents)
    digest = hashlib.sha256("\n".join(f"{e.prompt}\t{e.target}" for e in task.train + task.test).encode()).hexdigest()
    sft = exp.cfg.sft.model_dump(exclude={"gradient_checkpointing", "strategy", "lora", "fsdp_ranks"})
    sft["precision"] = resolve_precision(sft["precision"], exp.device)
    sft["learning_rate"] = task_cfg.learning_rate or sft["learning_rate"]
    spec = {"model": exp.model_id(mc), "task": task_cfg.spec(), "data": digest, "sft": sft, "seed": seed, "ks": ks,
            "region": exp.cfg.restore.region, "dtype": str(exp.train_dtype), "infer_dtype": str(exp.infer_dtype),
            "v": 1}

    def outputs(model, tok):
        with inference_copy(model, exp.infer_dtype) as m:
            outs = answer_questions(m, tok, [e.prompt for e in task.test], task.max_new_tokens,
                                    exp.cfg.run.batch_tokens, exp.progress, desc=task.name)
        return [o.split("<|question|>")[0] for o in outs]        # a model that goes on asks itself a new question

    def scored(outs):
        return {"scores": score(task.metric, outs, [e.target for e in task.test]), "examples": outs[:3]}

    def compute(tmp):
        model, tok = exp.pretrained(mc)
        rows = [{"k": "pre-SFT", **scored(outputs(model, tok))}]
        report = train(model, tok, [(e.prompt, e.target) for e in task.train], exp.cfg.sft, seed,
                       learning_rate=sft["learning_rate"], progress=exp.progress, desc=f"sft {task.name}")
        restorer = restorer_on(exp, model, mc, task.name)
        restorer.prepare(ks)
        for k in [0, *ks]:
            if k:
                with restorer.restored(k):
                    rows.append({"k": k, **scored(outputs(model, tok))})
            else:
                rows.append({"k": 0, **scored(outputs(model, tok))})
        return {"task": task.name, "metric": task.metric, "source": task.source, "n_train": len(task.train),
                "n_test": len(task.test), "rows": rows, "train": report.to_dict()}

    return exp.store.compute("task", spec, compute, f"{mc.name}-{task.name}-s{seed}")


# --------------------------------------------------------------------------------------------- per model
def update_stats(exp, mc=None) -> dict:
    """Tables 3, 9 and 10: ``update_statistics`` of every kept fine-tuned model (all seeds)."""
    return {k: update_statistics(exp, k, mc) for k in kept_runs(exp, mc, restoring=False)}


def restore_sweeps(exp, mc=None, on_train: bool = False) -> dict:
    """Tables 4 and 7 ({(RunKey, strategy): sweep} over kept models, all seeds, every ``restore.strategies``), or
    Table 6 (``on_train``: the top strategy at ``restore.train_k_percents`` on each model's training set)."""
    r = exp.cfg.restore
    if on_train:
        return {(k, "top"): restore_sweep(exp, k, r.train_k_percents, "top", on_train=True, mc=mc)
                for k in train_restored(exp, mc)}
    return {(k, s): restore_sweep(exp, k, r.k_percents, s, mc=mc) for k in kept_runs(exp, mc) for s in r.strategies}


def layer_sweeps(exp, mc=None) -> dict:
    """Table 11: ``layer_restore`` of the kept models at the largest kept scale (seeds: ``restore.layer_seeds``)."""
    seeds = exp.cfg.restore.layer_seeds or exp.grid_cfg(mc).seeds[:1]
    return {k: layer_restore(exp, k, mc) for k in largest_scale(kept_runs(exp, mc, seeds))}


def task_sweeps(exp) -> dict:
    """Table 5: {(task name, seed): ``task_sweep``} for every configured task, on the main model."""
    return {(t.name, seed): task_sweep(exp, t, seed) for t in exp.cfg.tasks for seed in t.seeds}


__all__ = ["update_stats", "restore_sweeps", "layer_sweeps", "task_sweeps", "largest_scale", "kept_runs",
           "train_restored", "update_statistics", "restore_sweep", "sweep_frame", "layer_restore", "task_sweep",
           "restorer_on", "CONCENTRATION_XS"]
