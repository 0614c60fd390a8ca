"""One experiment = one params file: data -> mastery probe -> SFT grid, each step a store unit.

Notebooks build an ``Experiment`` from their parameters cell and ask it for what they show; everything that
takes time is computed once, stored under ``runs/<run-name>/`` keyed by what determines it, and reused by every
later notebook and rerun.

Who owns a model: ``Experiment`` keeps, per model, its tokenizer and its pre-trained weights on the CPU (one
read-only copy, ``pretrained_state``). Whoever needs a model to work on asks ``pretrained(mc)`` or
``finetune(key, mc)`` and gets a fresh one of its own: nothing the experiment does later changes it, and nothing
the caller does to it changes what anyone else holds.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from . import mastery
from .config import ExperimentConfig, ModelConfig
from .data import load_source, paper_splits
from .errors import SftnbError
from .evaluate import evaluate_sets, inference_copy, paper_accuracy, pooled_accuracy, stored
from .facts import Fact
from .grid import GridRuns
from .models import copy_model, load_model, load_tokenizer, model_fingerprint, resolve_device, resolve_dtype
from .store import Store

SETS = ("train", "test", "testood")
TEST_SETS = tuple(f"test-{c}" for c in mastery.CATEGORIES)
OOD_SETS = tuple(f"testood-{c}" for c in mastery.CATEGORIES)


class Experiment(GridRuns):
    def __init__(self, cfg: ExperimentConfig, root: Path | None = None):
        self.cfg = cfg
        self.store = Store(cfg.out_dir(root))
        self.figures = cfg.figures_dir(root)
        self.figures.mkdir(parents=True, exist_ok=True)
        self.device = resolve_device(cfg.run.device)
        self.train_dtype = torch.float32 if cfg.run.dtype == "auto" else resolve_dtype(cfg.run.dtype, self.device)
        self.infer_dtype = resolve_dtype(cfg.run.inference_dtype, self.device)
        self.progress = cfg.run.progress
        if not self.progress:      # transformers' own bars too (loading, saving): nothing on stderr, as nbval expects
            from transformers.utils import logging as hf_logging
            hf_logging.disable_progress_bar()
        self._tokenizers: dict[str, object] = {}
        self._templates: dict[str, torch.nn.Module] = {}       # pre-trained model on the CPU, never handed out
        self._probes: dict[tuple[str, str], dict[str, pd.DataFrame]] = {}
        self._injections: dict[str, object] = {}

    # ------------------------------------------------------------------------------------------- data
    @cached_property
    def factset(self):
        d = self.cfg.data
        return load_source(d.source, d.path)

    @property
    def relations(self):
        return self.factset.relations

    @cached_property
    def sets(self) -> dict[str, list[Fact]]:
        """D_train, D_test, D_testood (capped per relation for reduced runs)."""
        d = self.cfg.data
        caps = {"train": d.max_train_per_relation, "test": d.max_test_per_relation,
                "testood": d.max_testood_per_relation}
        sets = paper_splits(self.factset, caps, d.seed)
        for name, facts in sets.items():
            if not facts:
                raise SftnbError(f"data: {self.cfg.data.source} has no facts for D_{name}")
        return sets

    # ------------------------------------------------------------------------------------------- models
    def model_path(self, mc: ModelConfig | None = None) -> str:
        """Where the model's weights are: ``mc.path``, or for a model with ``inject:`` the folder of its injection
        unit (built here on first use: the base model ``mc.path`` after continued pre-training)."""
        mc = mc or self.cfg.main_model
        if mc.inject is None:
            return mc.path
        return str(self.injection_unit(mc).file("model"))

    def model_id(self, mc: ModelConfig | None = None) -> str:
        """What identifies the model's weights in store keys (an injected model: its injection unit's key, so the
        keys do not depend on where the run folder lives)."""
        mc = mc or self.cfg.main_model
        return f"inject:{self.injection_unit(mc).key}" if mc.inject else model_fingerprint(mc.path)

    def injection_plan(self, mc: ModelConfig) -> list:
        """Which facts of D_train and D_test the testbed model is shown, and how often (``sftnb.inject``)."""
        from .inject import injection_plan

        return injection_plan(self.sets["train"], self.sets["test"], mc.inject)

    def injection_unit(self, mc: ModelConfig):
        """The store unit that builds the testbed model of ``mc`` (computed on first use, then cached)."""
        if mc.name not in self._injections:
            self._injections[mc.name] = self._injection_unit(mc)
        return self._injections[mc.name]

    def _injection_unit(self, mc: ModelConfig):
        from .inject import build, check_templates, default_templates, train_config

        ic = mc.inject
        templates = ic.templates or {r: list(t) for r, t in default_templates().items()}
        plan = self.injection_plan(mc)
        if not ic.allow_probe_wording:
            check_templates({r: templates[r] for r in {e.fact.relation for e in plan} if r in templates},
                            self.relations)
        return build(self.store, mc.path, model_fingerprint(mc.path), plan, templates,
                     train_config(self.cfg.sft, ic), ic.seed, mc.prompt_start, str(self.device), self.train_dtype,
                     self.progress, label=mc.name, length_grouped=ic.length_grouped)

    def identity(self, mc: ModelConfig | None = None) -> str:
        """The model named exactly, for captions: its variant, where its weights came from, its prompt start and
        the precision the run computed in."""
        from .models import describe

        mc = mc or self.cfg.main_model
        text = describe(mc.path)
        if mc.inject is not None:
            res = self.injection_unit(mc).result()
            text += (f" + knowledge injection ({res['facts']} facts at exposures "
                     f"{', '.join(map(str, mc.inject.exposures))}; {res['statements']} statements)")
        start = self.tokenizer(mc).sftnb_prompt_start
        shown = self.tokenizer(mc).convert_ids_to_tokens(list(start)) if start else "nothing"
        return f"{mc.name}: {text}; prompts start with {shown}; computed in {str(self.infer_dtype)[6:]}"

    def tokenizer(self, mc: ModelConfig | None = None):
        """The model's tokenizer (its prompt start set); no weights are read."""
        mc = mc or self.cfg.main_model
        if mc.name not in self._tokenizers:
            self._tokenizers[mc.name] = load_tokenizer(self.model_path(mc), mc.prompt_start)
        return self._tokenizers[mc.name]

    def _template(self, mc: ModelConfig) -> torch.nn.Module:
        if mc.name not in self._templates:
            model, _ = load_model(self.model_path(mc), device="cpu", dtype=self.train_dtype,
                                  prompt_start=mc.prompt_start)
            for p in model.parameters():
                p.requires_grad_(False)
            self._templates[mc.name] = model.eval()
        return self._templates[mc.name]

    def pretrained_state(self, mc: ModelConfig | None = None) -> dict[str, torch.Tensor]:
        """The pre-trained weights on the CPU: one read-only copy per model, shared by every analysis."""
        return {n: p.detach() for n, p in self._template(mc or self.cfg.main_model).named_parameters()}

    def pretrained(self, mc: ModelConfig | None = None):
        """(model, tokenizer): a fresh pre-trained model on the run's device, the caller's own."""
        mc = mc or self.cfg.main_model
        if mc.quantization:                 # bitsandbytes weights are not copyable: load them again
            model, _ = load_model(self.model_path(mc), device=str(self.device), dtype=self.train_dtype,
                                  quantization=mc.quantization, prompt_start=mc.prompt_start)
            return model, self.tokenizer(mc)
        model = copy_model(self._template(mc), self.device)     # made on the device: no copy on the host first
        for p in model.parameters():
            p.requires_grad_(True)
        return model.eval(), self.tokenizer(mc)

    # ------------------------------------------------------------------------------------------- mastery
    def probes(self, mc: ModelConfig | None = None, method: str | None = None) -> dict[str, pd.DataFrame]:
        """D_train / D_test / D_testood probed with ``method`` (``probe.method``): one table per set."""
        mc = mc or self.cfg.main_model
        method = method or self.cfg.probe.method
        if (mc.name, method) not in self._probes:
            out = {name: self._probe(mc, self.sets[name], method, f"{mc.name}-{name}") for name in SETS}
            if method == "calibrated":
                cal = self.calibration(mc)
                out = {name: cal.apply(df, self.cfg.probe.n_samples) for name, df in out.items()}
            self._probes[(mc.name, method)] = out
        return self._probes[(mc.name, method)]

    def _probe_args(self, mc: ModelConfig, facts: list[Fact], method: str, label: str, seed: int | None = None):
        cfg = self.cfg.probe if seed is None else self.cfg.probe.model_copy(update={"seed": seed})
        return ((self.store, lambda: self._inference_model(mc), self.tokenizer(mc), self.model_id(mc), facts,
                 self.relations, cfg, method, self.cfg.run.batch_tokens, self.progress),
                {"label": label, "dtype": str(self.infer_dtype)})

    def _probe(self, mc: ModelConfig, facts: list[Fact], method: str, label: str, seed: int | None = None):
        args, kw = self._probe_args(mc, facts, method, label, seed)
        return mastery.probe_stored(*args, **kw)

    def _probe_chunks(self, mc: ModelConfig, facts: list[Fact], method: str, label: str, seed: int | None = None):
        """The probe's store units one by one (``mastery.probe_chunks``): what the ranks share."""
        args, kw = self._probe_args(mc, facts, method, label, seed)
        return mastery.probe_chunks(*args, **kw)

    def _inference_model(self, mc: ModelConfig):
        if mc.quantization:
            return self.pretrained(mc)[0]
        return copy_model(self._template(mc), self.device, self.infer_dtype).eval()   # made in its dtype

    def study_facts(self, mc: ModelConfig | None = None) -> list[Fact]:
        """The facts sampled twice for the calibration and the agreement study (``probe.calibration_facts``)."""
        from .calibration import study_facts

        mc = mc or self.cfg.main_model
        n = self.cfg.probe.calibration_facts if mc.calibration_facts is None else mc.calibration_facts
        return study_facts([self.sets[s] for s in SETS], n, self.cfg.probe.seed)

    def sampled_study(self, mc: ModelConfig | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The study facts probed by the paper's sampling estimator with seeds ``probe.seed`` (A) and +1 (B)."""
        mc = mc or self.cfg.main_model
        facts, seed = self.study_facts(mc), self.cfg.probe.seed
        return (self._probe(mc, facts, "sampling", f"{mc.name}-study-A", seed),
                self._probe(mc, facts, "sampling", f"{mc.name}-study-B", seed + 1))

    def calibration(self, mc: ModelConfig | None = None):
        """alpha per relation, fitted on sampling run A of the study facts (``sftnb.calibration``)."""
        from .calibration import fit

        mc = mc or self.cfg.main_model
        likelihood = pd.concat(self.probes(mc, "likelihood").values(), ignore_index=True)
        return fit(likelihood, self.sampled_study(mc)[0])

    def probe_agreement(self, mc: ModelConfig | None = None) -> dict | None:
        """Issue 17's study: the calibrated estimator against two sampling runs on ``probe.calibration_facts``
        facts (``sftnb.calibration.agreement``). None unless ``probe.method`` is calibrated."""
        from .calibration import agreement

        mc = mc or self.cfg.main_model
        if self.cfg.probe.method != "calibrated":
            return None
        likelihood = pd.concat(self.probes(mc, "likelihood").values(), ignore_index=True)
        run_a, run_b = self.sampled_study(mc)
        return agreement(likelihood, run_a, run_b, self.cfg.probe.n_samples, mc.name)

    def prompt_start_study(self, mc: ModelConfig | None = None) -> pd.DataFrame:
        """The study facts probed (likelihood, answer at the start) with every ``probe.prompt_start_candidates``:
        mean R and the category counts under each start, and which one the run uses."""
        from .models import set_prompt_start

        mc = mc or self.cfg.main_model
        facts, cfg = self.study_facts(mc), self.cfg.probe.model_copy(update={"lead_ins": 0})
        used = tuple(self.tokenizer(mc).sftnb_prompt_start)
        rows = []
        for start in self.cfg.probe.prompt_start_candidates:
            tok = load_tokenizer(self.model_path(mc), mc.prompt_start)
            set_prompt_start(tok, start)
            df = mastery.probe_stored(self.store, lambda: self._inference_model(mc), tok, self.model_id(mc), facts,
                                      self.relations, cfg, "likelihood", self.cfg.run.batch_tokens, self.progress,
                                      label=f"{mc.name}-start", dtype=str(self.infer_dtype))
            counts = df["category"].value_counts().reindex(mastery.CATEGORIES, fill_value=0)
            rows.append({"prompt start": start, "tokens": tok.convert_ids_to_tokens(list(tok.sftnb_prompt_start)),
                         "facts": len(df), "mean R": float(df["R"].mean()),
                         **{f"category {c}": int(counts[c]) for c in mastery.CATEGORIES},
                         "used by this run": tuple(tok.sftnb_prompt_start) == used})
        return pd.DataFrame(rows)

    def categorized(self, mc: ModelConfig | None = None) -> dict[str, dict[int, list[Fact]]]:
        probes = self.probes(mc)
        return {name: mastery.split_by_category(self.sets[name], probes[name]) for name in SETS}

    def eval_sets(self, mc: ModelConfig | None = None) -> dict[str, list[Fact]]:
        cats = self.categorized(mc)
        return {**{f"test-{c}": cats["test"][c] for c in mastery.CATEGORIES},
                **{f"testood-{c}": cats["testood"][c] for c in mastery.CATEGORIES}}

    # ------------------------------------------------------------------------------------------- evaluation
    def evaluate(self, model, tok, sets: dict[str, Sequence[Fact]]) -> dict[str, dict]:
        with inference_copy(model, self.infer_dtype) as m:
            return evaluate_sets(m, tok, sets, self.cfg.eval.max_new_tokens, self.cfg.run.batch_tokens,
                                 self.progress)

    def summarize(self, results: dict[str, dict]) -> dict[str, float]:
        """Acc_test-i and Acc_testood-i with their fact counts, the paper's Acc_test / Acc_testood (NaN when a
        category has fewer than ``eval.min_category_facts`` facts), the pooled (count-weighted) accuracies, and
        the training-set accuracy if present."""
        out = {f"acc_{n}": results[n]["accuracy"] for n in results}
        out |= {f"count_{n}": results[n]["n"] for n in results}
        for domain, names in (("test", TEST_SETS), ("testood", OOD_SETS)):
            out[f"acc_{domain}"] = paper_accuracy(results, names, self.cfg.eval.min_category_facts)
            out[f"acc_{domain}_pooled"] = pooled_accuracy(results, names)
        return out

    # ------------------------------------------------------------------------------------------- specs
    def eval_spec(self, mc: ModelConfig) -> dict:
        """What an evaluation's result depends on besides the model."""
        return {"eval": self.cfg.eval.model_dump(), "infer_dtype": str(self.infer_dtype),
                "sets": {n: mastery.facts_digest(v) for n, v in self.eval_sets(mc).items()},
                "token_kl": self.cfg.token_kl.model_dump()}

    # ------------------------------------------------------------------------------------------- reference
    def reference(self, mc: ModelConfig | None = None) -> dict:
        """The pre-trained model's own scores, the §4.1 KL examples, and its first-token logits on them."""
        from .token_kl import first_token_logits_of, select_examples

        mc = mc or self.cfg.main_model
        sets = self.eval_sets(mc)
        probes = self.probes(mc)
        best = mastery.best_templates(pd.concat([probes["train"], probes["test"]]))
        tk = self.cfg.token_kl
        spec = {"model": self.model_id(mc), "eval": self.cfg.eval.model_dump(),
                "sets": {n: mastery.facts_digest(v) for n, v in sets.items()}, "token_kl": tk.model_dump(),
                "best": best, "dtype": str(self.infer_dtype)}

        def compute(tmp):
            model, tok = self.pretrained(mc)
            res = self.evaluate(model, tok, sets)
            with inference_copy(model, self.infer_dtype) as m:
                examples = select_examples(m, tok, sets[f"test-{tk.category}"], self.relations, best,
                                           tk.answer_within_words, tk.max_examples, self.cfg.eval.max_new_tokens,
                                           self.cfg.run.batch_tokens, self.progress)
                logits = first_token_logits_of(m, tok, [e["prompt"] for e in examples], self.cfg.run.batch_tokens)
            torch.save(logits.float(), tmp / "base_first_logits.pt")
            return {"metrics": self.summarize(res), "per_set": stored(res), "kl_examples": examples}

        unit = self.store.unit("reference", spec, f"{mc.name}")
        result = unit.compute(compute)
        result["base_logits_path"] = str(unit.file("base_first_logits.pt"))
        return result

    def instruct_reference(self, mc: ModelConfig, per_set: bool = False) -> dict:
        """Table 7's first column: the matching instruct model (``instruct_path``), evaluated like every fine-tuned
        model; its metrics, or (``per_set``) its stored per-set results with per-fact correctness."""
        sets = self.eval_sets(mc)
        spec = {"model": model_fingerprint(mc.instruct_path), "eval": self.cfg.eval.model_dump(),
                "sets": {n: mastery.facts_digest(v) for n, v in sets.items()}, "dtype": str(self.infer_dtype),
                "prompt_start": mc.prompt_start}

        def compute(tmp):
            model, tok = load_model(mc.instruct_path, device=str(self.device), dtype=self.infer_dtype,
                                    prompt_start=mc.prompt_start)
            res = self.evaluate(model, tok, sets)
            return {"metrics": self.summarize(res), "per_set": stored(res)}

        res = self.store.compute("instruct", spec, compute, f"{mc.name}-instruct")
        return res["per_set"] if per_set else res["metrics"]

    # ------------------------------------------------------------------------------------------- the testbed
    def base_of(self, mc: ModelConfig) -> ModelConfig:
        """The model a testbed was injected into: a configured model with the same path and no injection, or
        one made up for it."""
        for other in self.cfg.models:
            if other.inject is None and other.path == mc.path and other.prompt_start == mc.prompt_start:
                return other
        return mc.model_copy(update={"name": f"{mc.name}-base", "inject": None})

    def testbed(self, mc: ModelConfig) -> pd.DataFrame:
        """Every fact of D_train / D_test / D_testood with its exposure count (NaN: not in the injection plan),
        its R and category before (the base model) and after injection."""
        exposure = {e.fact.key: e.count for e in self.injection_plan(mc)}
        after = pd.concat(self.probes(mc).values(), ignore_index=True)
        t = after[["key", "relation", "split", "domain", "R", "category"]].merge(
            self.probes_before(mc)[["key", "R", "category"]], on="key", suffixes=("", "_before"))
        t["exposure"] = t["key"].map(exposure)
        return t

    def probes_before(self, mc: ModelConfig) -> pd.DataFrame:
        """The base model's probes for ``testbed``: of every fact, or of a seeded sample of ``inject.before_facts``
        spread over relations and sets (``calibration.study_facts``), probed and calibrated as the testbed is."""
        from .calibration import fit, study_facts

        base, n, method = self.base_of(mc), mc.inject.before_facts, self.cfg.probe.method
        if n is None:
            return pd.concat(self.probes(base).values(), ignore_index=True)
        facts = study_facts([self.sets[s] for s in SETS], n, self.cfg.probe.seed + 1)
        if method != "calibrated":
            return self._probe(base, facts, method, f"{base.name}-before")
        keys = {f.key for f in facts}       # the calibration study's facts are probed too: alpha is fitted on them
        likelihood = self._probe(base, facts + [f for f in self.study_facts(base) if f.key not in keys],
                                 "likelihood", f"{base.name}-before")
        calibrated = fit(likelihood, self.sampled_study(base)[0]).apply(likelihood, self.cfg.probe.n_samples)
        return calibrated[calibrated["key"].isin(keys)]

    # ------------------------------------------------------------------------------------------- all the work
    def work(self, mc: ModelConfig) -> list:
        """Every unit one model needs, as stages of zero-argument callables in dependency order (each computes or
        reuses store units): what the ranks of ``sftnb run`` under torchrun share (``sftnb.distributed``)."""
        from . import param_analysis as pa
        from .distributed import Deferred

        stages: list = []
        if mc.inject is not None:
            stages.append([lambda: self.injection_unit(mc)])

        # one callable per probe chunk (not per fact set): a rank that meets a chunk another rank computes takes
        # the next one, so every rank probes while chunks remain. Stages are listed when they are reached
        # (Deferred): listing them needs what the stages before compute (the injected model, the categories).
        def probes():
            units = [c for s in ("train", "test", "testood")
                     for c in self._probe_chunks(mc, self.sets[s], self.cfg.probe.method, f"{mc.name}-{s}")]
            if self.cfg.probe.method == "calibrated":
                seed = self.cfg.probe.seed
                units += self._probe_chunks(mc, self.study_facts(mc), "sampling", f"{mc.name}-study-A", seed)
                units += self._probe_chunks(mc, self.study_facts(mc), "sampling", f"{mc.name}-study-B", seed + 1)
            return units

        stages.append(Deferred(probes))
        if mc.name == self.cfg.main_model.name and self.cfg.tasks:
            stages.append([lambda t=t, seed=seed: pa.task_sweep(self, t, seed) for t in self.cfg.tasks
                           for seed in t.seeds])
        if mc.name not in {m.name for m in self.cfg.grid_models}:
            return stages
        stages.append([lambda: self.reference(mc)])
        stages.append(Deferred(lambda: self.run_units(mc)))

        def after():
            kept, r = pa.kept_runs(self, mc), self.cfg.restore
            units = [lambda k=k: pa.update_statistics(self, k, mc) for k in pa.kept_runs(self, mc, restoring=False)]
            units += [lambda k=k, s=s: pa.restore_sweep(self, k, r.k_percents, s, mc=mc) for k in kept
                      for s in r.strategies]
            units += [lambda k=k: pa.restore_sweep(self, k, r.train_k_percents, "top", on_train=True, mc=mc)
                      for k in pa.train_restored(self, mc)]
            seeds = r.layer_seeds or self.grid_cfg(mc).seeds[:1]
            units += [lambda k=k: pa.layer_restore(self, k, mc)
                      for k in pa.largest_scale(pa.kept_runs(self, mc, seeds))]
            return units

        stages.append(Deferred(after))
        return stages
