"""One model of an experiment: ``ModelRun``, bound to one ``models:`` entry.

A ``ModelRun`` knows its weights (a path, or the testbed its injection unit builds), its tokenizer, its
pre-trained copy on the CPU, its probes and mastery categories, its evaluation sets and its reference scores.
Its SFT grid is ``run.grid`` (``sftnb.grid.Grid``), and the parameter-level analyses take the run itself
(``sftnb.param_analysis``). Everything that takes time is a store unit of the experiment's store.

Who owns a model: the run keeps its tokenizer and its pre-trained weights on the CPU (one read-only copy,
``template``). Whoever needs a model to work on asks ``pretrained()`` (or ``grid.finetune(key)``) and gets a
fresh one of its own: nothing the run does later changes it, and nothing the caller does to it changes what
anyone else holds.
"""
from __future__ import annotations

from functools import cached_property
from typing import Sequence

import pandas as pd
import torch

from . import mastery
from .config import ModelConfig
from .evaluate import evaluate_sets, inference_copy, paper_accuracy, pooled_accuracy, stored
from .data.facts import CATEGORIES, Fact
from .grid import Grid
from .lm.models import copy_model, load_model, load_tokenizer, maps_itself, model_fingerprint, model_folder

SETS = ("train", "test", "testood")
TEST_SETS = tuple(f"test-{c}" for c in CATEGORIES)
OOD_SETS = tuple(f"testood-{c}" for c in CATEGORIES)


class ModelRun:
    """One model's probe, grid and analyses (``exp.model(name)``); see the module docstring."""

    def __init__(self, exp, mc: ModelConfig):
        """``exp``: the ``sftnb.experiment.Experiment`` that holds the data, the store, the device and dtypes."""
        self.exp, self.mc, self.name = exp, mc, mc.name
        self.cfg, self.store = exp.cfg, exp.store
        self._probes: dict[str, dict[str, pd.DataFrame]] = {}
        self.grid = Grid(self)

    def __repr__(self) -> str:
        return f"ModelRun({self.name!r})"

    # ------------------------------------------------------------------------------------------- weights
    @cached_property
    def injection(self):
        """The store unit that builds this testbed model (``sftnb.inject``), computed on first use; None for a
        model without ``inject:``."""
        if self.mc.inject is None:
            return None
        from .inject import build_testbed

        return build_testbed(self.store, self.mc, self.exp.sets, self.exp.relations, self.cfg.sft,
                             str(self.exp.device), self.exp.train_dtype, self.exp.progress)

    @property
    def model_path(self) -> str:
        """Where the weights are: ``path``, or for a model with ``inject:`` the folder of its injection unit."""
        return self.mc.path if self.injection is None else str(self.injection.file("model"))

    @cached_property
    def model_id(self) -> str:
        """What identifies the weights in store keys (a testbed: its injection unit's key, so that the keys do not
        depend on where the run folder lives)."""
        return f"inject:{self.injection.key}" if self.mc.inject else model_fingerprint(self.mc.path)

    @cached_property
    def tokenizer(self):
        """The model's tokenizer (its prompt start set); no weights are read."""
        return load_tokenizer(self.model_path, self.mc.prompt_start)

    @cached_property
    def template(self) -> torch.nn.Module:
        """The pre-trained model on the CPU, frozen: read (copied, its state taken), never handed out. Loaded from
        safetensors in the training dtype its parameters are memory-mapped from the files, so every process of a
        node shares one copy (the page cache) instead of holding its own: a folder in another dtype (LLaMA-3-8B's
        bf16 under fp32 training) is first written once in the training dtype as a store unit (``template_folder``)."""
        model, _ = load_model(self.template_folder(), device="cpu", dtype=self.exp.train_dtype,
                              prompt_start=self.mc.prompt_start)
        for p in model.parameters():
            p.requires_grad_(False)
        return model.eval()

    def template_folder(self) -> str:
        """Where the template is loaded from: the model's own folder when its safetensors are in the training
        dtype, else a store unit holding the weights converted to it (computed by one process, read by all).
        tiny-random and quantized models have no files to share and load as before."""
        dtype = self.exp.train_dtype
        if self.mc.quantization or model_folder(self.model_path) is None or maps_itself(self.model_path, dtype):
            return self.model_path

        def convert(tmp):
            model, tok = load_model(self.model_path, device="cpu", dtype=dtype, prompt_start=self.mc.prompt_start)
            model.save_pretrained(tmp / "model")          # safetensors, in shards for a large model
            tok.save_pretrained(tmp / "model")
            return {"dtype": str(dtype), "params": sum(p.numel() for p in model.parameters())}

        unit = self.store.unit("template", {"model": self.model_id, "dtype": str(dtype)}, label=self.name)
        unit.compute(convert)
        return str(unit.file("model"))

    def identity(self) -> str:
        """The model named exactly, for captions: its variant, where its weights came from, its prompt start and
        the precision the run computed in."""
        from .lm.models import describe

        mc, text = self.mc, describe(self.mc.path)
        if mc.inject is not None:
            res = self.injection.result()
            text += (f" + knowledge injection ({res['facts']} facts at exposures "
                     f"{', '.join(map(str, mc.inject.exposures))}; {res['statements']} statements)")
        start = self.tokenizer.sftnb_prompt_start
        shown = self.tokenizer.convert_ids_to_tokens(list(start)) if start else "nothing"
        return f"{mc.name}: {text}; prompts start with {shown}; computed in {str(self.exp.infer_dtype)[6:]}"

    def pretrained_state(self) -> dict[str, torch.Tensor]:
        """The pre-trained weights on the CPU: one read-only copy, shared by every analysis."""
        return {n: p.detach() for n, p in self.template.named_parameters()}

    def pretrained(self):
        """(model, tokenizer): a fresh pre-trained model on the run's device, the caller's own."""
        device = self.exp.device
        if self.mc.quantization:            # bitsandbytes weights are not copyable: load them again
            model, _ = load_model(self.model_path, device=str(device), dtype=self.exp.train_dtype,
                                  quantization=self.mc.quantization, prompt_start=self.mc.prompt_start)
            return model, self.tokenizer
        model = copy_model(self.template, device)       # made on the device: no copy on the host first
        for p in model.parameters():
            p.requires_grad_(True)
        return model.eval(), self.tokenizer

    def inference_model(self):
        """A fresh pre-trained model in the inference dtype, for the probe."""
        if self.mc.quantization:
            return self.pretrained()[0]
        return copy_model(self.template, self.exp.device, self.exp.infer_dtype).eval()   # made in its dtype

    # ------------------------------------------------------------------------------------------- mastery
    def probes(self, method: str | None = None) -> dict[str, pd.DataFrame]:
        """D_train / D_test / D_testood probed with ``method`` (``probe.method``): one table per set."""
        method = method or self.cfg.probe.method
        if method not in self._probes:
            out = {name: self.probe(self.exp.sets[name], method, f"{self.name}-{name}") for name in SETS}
            if method == "calibrated":
                cal = self.calibration()
                out = {name: cal.apply(df, self.cfg.probe.n_samples) for name, df in out.items()}
            self._probes[method] = out
        return self._probes[method]

    def probe(self, facts: list[Fact], method: str, label: str, seed: int | None = None,
              tokenizer=None) -> pd.DataFrame:
        """``facts`` probed with ``method`` (``mastery.probe_stored``): one store unit per chunk of facts."""
        return mastery.probe_stored(*self._probe_args(facts, method, seed, tokenizer), label=label,
                                    dtype=str(self.exp.infer_dtype))

    def probe_chunks(self, facts: list[Fact], method: str, label: str, seed: int | None = None) -> list:
        """The probe's store units one by one (``mastery.probe_chunks``): what the ranks share."""
        return mastery.probe_chunks(*self._probe_args(facts, method, seed), label=label,
                                    dtype=str(self.exp.infer_dtype))

    def _probe_args(self, facts, method, seed, tokenizer=None) -> tuple:
        cfg = self.cfg.probe if seed is None else self.cfg.probe.model_copy(update={"seed": seed})
        return (self.store, self.inference_model, tokenizer or self.tokenizer, self.model_id, facts,
                self.exp.relations, cfg, method, self.cfg.run.batch_tokens, self.exp.progress)

    def study_facts(self) -> list[Fact]:
        """The facts sampled twice for the calibration and the agreement study (``probe.calibration_facts``)."""
        from .calibration import study_facts

        n = self.cfg.probe.calibration_facts if self.mc.calibration_facts is None else self.mc.calibration_facts
        return study_facts([self.exp.sets[s] for s in SETS], n, self.cfg.probe.seed)

    def sampled_study(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The study facts probed by the paper's sampling estimator with seeds ``probe.seed`` (A) and +1 (B)."""
        facts, seed = self.study_facts(), self.cfg.probe.seed
        return (self.probe(facts, "sampling", f"{self.name}-study-A", seed),
                self.probe(facts, "sampling", f"{self.name}-study-B", seed + 1))

    def calibration(self):
        """alpha per relation, fitted on sampling run A of the study facts (``sftnb.calibration``)."""
        from .calibration import fit

        likelihood = pd.concat(self.probes("likelihood").values(), ignore_index=True)
        return fit(likelihood, self.sampled_study()[0])

    def probe_agreement(self) -> dict | None:
        """Issue 17's study: the calibrated estimator against two sampling runs on ``probe.calibration_facts``
        facts (``sftnb.calibration.agreement``). None unless ``probe.method`` is calibrated."""
        from .calibration import agreement

        if self.cfg.probe.method != "calibrated":
            return None
        likelihood = pd.concat(self.probes("likelihood").values(), ignore_index=True)
        run_a, run_b = self.sampled_study()
        return agreement(likelihood, run_a, run_b, self.cfg.probe.n_samples, self.name)

    def prompt_start_study(self) -> pd.DataFrame:
        """The study facts probed (likelihood, answer at the start) with every ``probe.prompt_start_candidates``:
        mean R and the category counts under each start, and which one the run uses."""
        from .lm.models import set_prompt_start

        facts = self.study_facts()
        cfg = self.cfg.probe.model_copy(update={"lead_ins": 0})
        used = tuple(self.tokenizer.sftnb_prompt_start)
        rows = []
        for start in self.cfg.probe.prompt_start_candidates:
            tok = load_tokenizer(self.model_path, self.mc.prompt_start)
            set_prompt_start(tok, start)
            args = (self.store, self.inference_model, tok, self.model_id, facts, self.exp.relations, cfg,
                    "likelihood", self.cfg.run.batch_tokens, self.exp.progress)
            df = mastery.probe_stored(*args, label=f"{self.name}-start", dtype=str(self.exp.infer_dtype))
            counts = df["category"].value_counts().reindex(CATEGORIES, fill_value=0)
            rows.append({"prompt start": start, "tokens": tok.convert_ids_to_tokens(list(tok.sftnb_prompt_start)),
                         "facts": len(df), "mean R": float(df["R"].mean()),
                         **{f"category {c}": int(counts[c]) for c in CATEGORIES},
                         "used by this run": tuple(tok.sftnb_prompt_start) == used})
        return pd.DataFrame(rows)

    def categorized(self) -> dict[str, dict[int, list[Fact]]]:
        probes = self.probes()
        return {name: mastery.split_by_category(self.exp.sets[name], probes[name]) for name in SETS}

    def eval_sets(self) -> dict[str, list[Fact]]:
        cats = self.categorized()
        return {**{f"test-{c}": cats["test"][c] for c in CATEGORIES},
                **{f"testood-{c}": cats["testood"][c] for c in CATEGORIES}}

    # ------------------------------------------------------------------------------------------- evaluation
    def evaluate(self, model, tok, sets: dict[str, Sequence[Fact]]) -> dict[str, dict]:
        with inference_copy(model, self.exp.infer_dtype) as m:
            return evaluate_sets(m, tok, sets, self.cfg.eval.max_new_tokens, self.cfg.run.batch_tokens,
                                 self.exp.progress)

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

    def eval_spec(self) -> dict:
        """What an evaluation's result depends on besides the model."""
        return {"eval": self.cfg.eval.model_dump(), "infer_dtype": str(self.exp.infer_dtype),
                "sets": {n: mastery.facts_digest(v) for n, v in self.eval_sets().items()},
                "token_kl": self.cfg.token_kl.model_dump()}

    def reference(self) -> dict:
        """The pre-trained model's own scores, the §4.1 KL examples, and its first-token logits on them."""
        from .token_kl import first_token_logits_of, select_examples

        sets, probes, infer_dtype = self.eval_sets(), self.probes(), self.exp.infer_dtype
        best = mastery.best_templates(pd.concat([probes["train"], probes["test"]]))
        tk, batch_tokens = self.cfg.token_kl, self.cfg.run.batch_tokens
        spec = {"model": self.model_id, "eval": self.cfg.eval.model_dump(),
                "sets": {n: mastery.facts_digest(v) for n, v in sets.items()}, "token_kl": tk.model_dump(),
                "best": best, "dtype": str(infer_dtype)}

        def compute(tmp):
            model, tok = self.pretrained()
            res = self.evaluate(model, tok, sets)
            with inference_copy(model, infer_dtype) as m:
                examples = select_examples(m, tok, sets[f"test-{tk.category}"], self.exp.relations, best,
                                           tk.answer_within_words, tk.max_examples, self.cfg.eval.max_new_tokens,
                                           batch_tokens, self.exp.progress)
                logits = first_token_logits_of(m, tok, [e["prompt"] for e in examples], batch_tokens)
            torch.save(logits.float(), tmp / "base_first_logits.pt")
            return {"metrics": self.summarize(res), "per_set": stored(res), "kl_examples": examples}

        unit = self.store.unit("reference", spec, self.name)
        result = unit.compute(compute)
        result["base_logits_path"] = str(unit.file("base_first_logits.pt"))
        return result

    def instruct_reference(self, per_set: bool = False) -> dict:
        """Table 7's first column: the matching instruct model (``instruct_path``), evaluated like every fine-tuned
        model; its metrics, or (``per_set``) its stored per-set results with per-fact correctness."""
        mc, sets = self.mc, self.eval_sets()
        spec = {"model": model_fingerprint(mc.instruct_path), "eval": self.cfg.eval.model_dump(),
                "sets": {n: mastery.facts_digest(v) for n, v in sets.items()}, "dtype": str(self.exp.infer_dtype),
                "prompt_start": mc.prompt_start}

        def compute(tmp):
            model, tok = load_model(mc.instruct_path, device=str(self.exp.device), dtype=self.exp.infer_dtype,
                                    prompt_start=mc.prompt_start)
            res = self.evaluate(model, tok, sets)
            return {"metrics": self.summarize(res), "per_set": stored(res)}

        res = self.store.compute("instruct", spec, compute, f"{mc.name}-instruct")
        return res["per_set"] if per_set else res["metrics"]

    # ------------------------------------------------------------------------------------------- the testbed
    def testbed(self) -> pd.DataFrame:
        """Every fact of D_train / D_test / D_testood with its exposure count (NaN: not in the injection plan),
        its R and category before (the base model) and after injection."""
        from .inject import injection_plan

        exposure = {e.fact.key: e.count for e in injection_plan(self.exp.sets["train"], self.exp.sets["test"], self.mc.inject)}
        after = pd.concat(self.probes().values(), ignore_index=True)
        t = after[["key", "relation", "split", "domain", "R", "category"]].merge(
            self.probes_before()[["key", "R", "category"]], on="key", suffixes=("", "_before"))
        t["exposure"] = t["key"].map(exposure)
        return t

    def base(self) -> "ModelRun":
        """The model a testbed was injected into: a configured model with the same path and no injection, or
        one made up for it."""
        for other in self.cfg.models:
            if other.inject is None and other.path == self.mc.path and other.prompt_start == self.mc.prompt_start:
                return self.exp.model(other)
        return self.exp.model(self.mc.model_copy(update={"name": f"{self.name}-base", "inject": None}))

    def probes_before(self) -> pd.DataFrame:
        """The base model's probes for ``testbed``: of every fact, or of a seeded sample of ``inject.before_facts``
        spread over relations and sets (``calibration.study_facts``), probed and calibrated as the testbed is."""
        from .calibration import fit, study_facts

        base, n, method = self.base(), self.mc.inject.before_facts, self.cfg.probe.method
        if n is None:
            return pd.concat(base.probes().values(), ignore_index=True)
        facts = study_facts([self.exp.sets[s] for s in SETS], n, self.cfg.probe.seed + 1)
        if method != "calibrated":
            return base.probe(facts, method, f"{base.name}-before")
        keys = {f.key for f in facts}       # the calibration study's facts are probed too: alpha is fitted on them
        likelihood = base.probe(facts + [f for f in base.study_facts() if f.key not in keys], "likelihood",
                                f"{base.name}-before")
        calibrated = fit(likelihood, base.sampled_study()[0]).apply(likelihood, self.cfg.probe.n_samples)
        return calibrated[calibrated["key"].isin(keys)]
