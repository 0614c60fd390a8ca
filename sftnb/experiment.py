"""One experiment = one params file: its data, its store, and one ``ModelRun`` per model.

Notebooks build an ``Experiment`` from their parameters cell and ask ``exp.model(name)`` for what they show;
everything that takes time is computed once, stored under ``runs/<run-name>/`` keyed by what determines it, and
reused by every later notebook and rerun. ``work()`` lists every unit of the run (``sftnb.work``) for the ranks
of ``sftnb run`` under torchrun.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

import torch

from .config import ExperimentConfig, ModelConfig
from .data.sources import load_source, paper_splits
from .infra.errors import SftnbError
from .data.facts import Fact
from .lm.models import resolve_device, resolve_dtype
from .run import ModelRun
from .infra.store import Store


class Experiment:
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
        self._runs: dict[str, ModelRun] = {}

    # ------------------------------------------------------------------------------------------- models
    def model(self, which: str | ModelConfig) -> ModelRun:
        """The run of one model: by its ``models[].name``, or by its config (a made-up one too, e.g. a testbed's
        base model). One ``ModelRun`` per name, holding that model's caches."""
        if isinstance(which, ModelConfig):
            mc = which
        else:
            mc = next((m for m in self.cfg.models if m.name == which), None)
            if mc is None:
                raise SftnbError(f"no model named {which!r} in this run "
                                 f"(models: {', '.join(m.name for m in self.cfg.models)})")
        if mc.name not in self._runs:
            self._runs[mc.name] = ModelRun(self, mc)
        return self._runs[mc.name]

    @property
    def main(self) -> ModelRun:
        """The run's first model (``models[0]``): Table 5's tasks are fine-tuned from it."""
        return self.model(self.cfg.main_model)

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

    # ------------------------------------------------------------------------------------------- all the work
    def work(self) -> list[list]:
        """Every unit of the run: per model, its stages of zero-argument callables in dependency order
        (``sftnb.work.stages``), as the ranks of ``sftnb run`` under torchrun share them."""
        from .work import stages

        return [stages(self.model(mc)) for mc in self.cfg.models]
