"""The SFT grid (paper §3.3-3.4): every model fine-tuned on each mastery category (and on mixed data, and with LoRA)
at several scales and seeds, each run evaluated in and out of domain and on its first tokens (§4): one store unit
per run.

``Grid`` is one model's grid (``run.grid`` of a ``sftnb.run.ModelRun``: it reads the run's data, model and probes).
``sftnb.work`` lists its units, with the others of a run, in dependency order for ``sftnb run`` under torchrun
(``sftnb.infra.distributed``).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from . import mastery
from .data.scales import Scale, scale_order
from .infra.errors import SftnbError
from .evaluate import inference_copy, stored
from .data.facts import Fact
from .lm.models import copy_model
from .sft import resolve_precision, train, train_lora


@dataclass(frozen=True)
class RunKey:
    """One SFT run of the grid: how its training set was drawn and fine-tuned."""
    kind: str            # "divided" (one mastery category), "mixed" (any category) or "lora" (mixed, LoRA)
    category: int | None
    scale: Scale
    seed: int

    @property
    def label(self) -> str:
        cat = f"cat{self.category}" if self.category is not None else "mixed"
        return f"{self.kind}-{cat}-n{self.scale}-s{self.seed}"


def balanced_sample(facts: Sequence[Fact], n: int | str, seed: int) -> list[Fact] | None:
    """``n`` facts drawn round-robin over relations in a seeded order, so per-relation counts differ by at most
    one (while a relation has facts left); ``"all"`` = every fact; ``None`` when fewer than ``n`` exist."""
    rng = random.Random(seed)
    if n == "all":
        out = list(facts)
        rng.shuffle(out)
        return out
    if n > len(facts):
        return None
    by_rel: dict[str, list[Fact]] = {}
    for f in facts:
        by_rel.setdefault(f.relation, []).append(f)
    pools = {r: rng.sample(v, len(v)) for r, v in sorted(by_rel.items())}
    out: list[Fact] = []
    while len(out) < n:
        order = [r for r in sorted(pools) if pools[r]]
        rng.shuffle(order)
        for r in order[: n - len(out)]:
            out.append(pools[r].pop())
    return out


class Grid:
    """One model's SFT grid (``run.grid``): its runs' keys, training sets, store units and results."""

    def __init__(self, run):
        self.run = run
        self.config = run.mc.grid or run.cfg.grid          # the model's own grid (``models[].grid``) or the run's

    def spec(self, key: RunKey) -> dict | None:
        """The store spec of a grid unit (its fine-tuning and evaluation); None when its category has too few
        facts. Every unit derived from a fine-tuned model (restoration sweeps ...) extends this spec."""
        run = self.run
        facts = self.training_facts(key)
        if facts is None:
            return None
        # what ran, not what was asked; settings that change no result (how memory is spent) stay out of the key
        sft = run.cfg.sft.model_dump(exclude={"gradient_checkpointing", "strategy", "fsdp_ranks"})
        sft["precision"] = resolve_precision(sft["precision"], run.exp.device)
        if key.kind != "lora":
            sft.pop("lora")
        return {"model": run.model_id, "run": key.__dict__, "train": mastery.facts_digest(facts),
                "sft": sft, "dtype": str(run.exp.train_dtype), "eval": run.eval_spec()}

    def kl_example(self) -> tuple[pd.DataFrame, dict] | None:
        """Figure 3's data: the first §4.1 example under the first divided model (largest kept scale, first seed)
        that has one: (its top-k table, the example). None when there is no KL example."""
        ref = self.run.reference()
        if not ref["kl_examples"]:
            return None
        g = self.config
        scale = scale_order([s for s in g.keep_checkpoints if s in g.scales] or g.scales)[-1]
        for cat in g.categories:
            res = self.unit(RunKey("divided", cat, scale, g.seeds_at(scale)[0]))
            if res is not None and res.get("fig3_example"):
                return pd.DataFrame(res["fig3_example"]), ref["kl_examples"][0]
        return None

    def keys(self) -> list[RunKey]:
        g = self.config
        keys = [RunKey("divided", c, s, seed) for c in g.categories for s in g.scales for seed in g.seeds_at(s)]
        if g.mixed:
            keys += [RunKey("mixed", None, s, seed) for s in (g.mixed_scales or g.scales) for seed in g.seeds_at(s)]
        if g.lora:
            keys += [RunKey("lora", None, s, seed) for s in (g.lora_scales or g.scales) for seed in g.seeds_at(s)]
        return keys

    def training_facts(self, key: RunKey) -> list[Fact] | None:
        pool = self.run.exp.sets["train"] if key.category is None else self.run.categorized()["train"][key.category]
        return balanced_sample(pool, key.scale, key.seed)

    def checkpoint_dir(self, key: RunKey) -> Path | None:
        """The kept fine-tuned checkpoint of a grid run (a Hugging Face folder: weights, config, tokenizer, so
        that ``sftnb restore --tuned`` and ``from_pretrained`` take it as it is), or None if it was not kept."""
        spec = self.spec(key)
        if spec is None:
            return None
        folder = self.run.store.unit("sft", spec, key.label).file("checkpoint")
        return folder if (folder / "config.json").is_file() else None

    def checkpoint_state(self, key: RunKey, device) -> dict[str, torch.Tensor] | None:
        """The kept checkpoint's tensors on ``device`` (on the CPU memory-mapped: read as they are used), or None
        if it was not kept."""
        ckpt = self.checkpoint_dir(key)
        if ckpt is None:
            return None
        from safetensors.torch import load_file
        state = {}
        for f in sorted(ckpt.glob("*.safetensors")):
            state |= load_file(str(f), device=str(device))
        return state

    def finetune(self, key: RunKey):
        """(fine-tuned model, tokenizer, train report): a fresh model of the caller's own, from the kept checkpoint
        if there is one, else re-trained from its seed (deterministic) starting from the pre-trained weights."""
        run = self.run
        facts = self.training_facts(key)
        if facts is None:
            raise SftnbError(f"{key.label}: D_train-{key.category} has too few facts for scale {key.scale}")
        state = self.checkpoint_state(key, run.exp.device)
        if state is not None:
            # made straight from the checkpoint (a tied output head is saved once, under the embedding's name)
            model = copy_model(run.template, run.exp.device, state=state).requires_grad_(True).eval()
            return model, run.tokenizer, None
        model, tok = run.pretrained()
        pairs = [(f.question, f.answers[0]) for f in facts]
        if key.kind == "lora":
            merged, report = train_lora(model, tok, pairs, run.cfg.sft, key.seed, run.exp.progress)
            return merged, tok, report
        report = train(model, tok, pairs, run.cfg.sft, key.seed, progress=run.exp.progress, desc=key.label)
        return model, tok, report

    def units(self) -> list:
        """The grid's units as ``sftnb run``'s ranks share them (``sftnb.work``): a run each, claimed by
        whichever rank is free. With ``sft.strategy: fsdp`` the sharded runs form a ``Grouped`` stage (groups of
        ``fsdp_ranks`` ranks train different runs at once) and the LoRA runs, which train on one device, follow in
        the same stage, taken by ranks whose group is done."""
        from .infra.distributed import Grouped

        keys = [k for k in self.keys() if self.training_facts(k) is not None]
        unit = lambda k: (lambda: self.unit(k))           # noqa: E731
        if self.run.cfg.sft.strategy != "fsdp":
            return [unit(k) for k in keys]
        # LoRA runs train on one device: ranks whose group has no sharded run left take them (Grouped.then)
        return Grouped([unit(k) for k in keys if k.kind != "lora"], self.fsdp_ranks(),
                       then=[unit(k) for k in keys if k.kind == "lora"])

    def fsdp_ranks(self) -> int:
        """Ranks per sharded run: ``sft.fsdp_ranks``, or (auto) the smallest divisor of the world size on whose
        GPUs the plan's SFT stage fits (all of them on a CPU, where nothing limits a group)."""
        from .infra.launch import world

        size, sft = world()[1], self.run.cfg.sft
        if sft.fsdp_ranks != "auto":
            if size % sft.fsdp_ranks:
                raise SftnbError(f"sft.fsdp_ranks {sft.fsdp_ranks} does not divide the {size} ranks")
            return sft.fsdp_ranks
        if self.run.exp.device.type != "cuda":
            return size
        from .plan import plan_from_config
        for g in [d for d in range(1, size + 1) if size % d == 0]:
            p = plan_from_config(self.run.cfg, gpus=g)
            if p.stages["sft"].total <= p.capacity:
                return g
        return size

    def unit(self, key: RunKey) -> dict | None:
        """Fine-tune, evaluate in and out of domain (and on its training set), first-token KL: one store unit.
        With ``sft.strategy: fsdp`` under torchrun, the ranks of one group (``units``) train the run together
        (``sftnb.fsdp``) and the group's first rank evaluates and publishes it (``distributed.compute_collective``)."""
        spec = self.spec(key)
        if spec is None:
            return None
        ref = self.run.reference()
        unit = self.run.store.unit("sft", spec, key.label)
        if self.run.cfg.sft.strategy == "fsdp" and key.kind != "lora":
            from .infra import distributed
            return distributed.compute_collective(unit, lambda tmp: self._compute_fsdp(tmp, key, ref))
        return unit.compute(lambda tmp: self._evaluate(tmp, key, ref, *self.finetune(key)))

    def _compute_fsdp(self, tmp, key: RunKey, ref: dict) -> dict:
        from .infra import distributed
        from .fsdp import mixed_precision, sharded_from_rank0, train_fsdp
        from .infra.launch import device

        run = self.run
        # no copy of the model on any rank: built empty and sharded over the run's group (distributed.group_mesh;
        # all ranks when None), each rank taking its shards from the pre-trained template -- rank 0's, broadcast,
        # when the run spans every rank; each rank's own (every rank maps one) in a group of some of them
        template, mesh = run.template, distributed.group_mesh()
        state = template.state_dict() if tmp is not None or mesh is not None else None
        model = sharded_from_rank0(template.config, state, mesh=mesh, broadcast=mesh is None,
                                   mp_policy=mixed_precision(run.cfg.sft.precision, device()))
        pairs = [(f.question, f.answers[0]) for f in self.training_facts(key)]
        report, state = train_fsdp(model, run.tokenizer, pairs, run.cfg.sft, key.seed, progress=run.exp.progress,
                                   desc=key.label, mesh=mesh)
        del model
        if tmp is None:                     # ranks > 0: their part was the training
            return {}
        # the gathered weights (on rank 0's host) become the model as they are (assign: no copy); _evaluate
        # moves it to the device in the inference dtype. Built on the template's own config object, as
        # models.copy_model builds every other model: on CUDA the compiled decode step is traced once for all
        # of them (from_config would deep-copy the config, and each model would be traced again)
        with torch.device("meta"):
            tuned = type(template)(template.config)
        tuned.load_state_dict(state, assign=True, strict=False)
        tuned.tie_weights()
        for name, buf in template.named_buffers():          # the rotary frequencies: in no state dict
            if name not in state:
                _set_buffer(tuned, name, buf.clone())
        tuned.generation_config = template.generation_config
        return self._evaluate(tmp, key, ref, tuned.eval(), run.tokenizer, report)

    def _evaluate(self, tmp, key: RunKey, ref: dict, model, tok, report) -> dict:
        from .token_kl import first_token_logits_of, renormalized_kl, topk_table

        run, cfg = self.run, self.run.cfg
        if key.scale in self.config.keep_checkpoints and key.kind == "divided":
            model.save_pretrained(tmp / "checkpoint")
            tok.save_pretrained(tmp / "checkpoint")
        # the training precision is not needed again: cast in place (tensor by tensor), never a second copy
        model.to(device=run.exp.device, dtype=run.exp.infer_dtype)
        facts = self.training_facts(key)
        sets = dict(run.eval_sets())
        if cfg.eval.train_accuracy:
            sets["train"] = facts
        res = run.evaluate(model, tok, sets)
        kl_mean, kl_rows, fig3 = float("nan"), [], None
        ex = ref["kl_examples"]
        if ex:
            with inference_copy(model, run.exp.infer_dtype) as m:
                ft = first_token_logits_of(m, tok, [e["prompt"] for e in ex], cfg.run.batch_tokens)
            base = torch.load(ref["base_logits_path"])
            kl = renormalized_kl(ft, base, k=cfg.token_kl.k)
            kl_mean, kl_rows = float(kl.mean()), [round(float(x), 6) for x in kl]
            fig3 = topk_table(ft[0], base[0], tok, k=cfg.token_kl.k).to_dict(orient="list")
        return {"metrics": run.summarize(res) | {"kl": kl_mean}, "per_set": stored(res),
                "kl": kl_rows, "fig3_example": fig3, "train": report.to_dict() if report else None,
                "n_train": len(facts)}

    def results(self) -> dict:
        """{RunKey: stored unit result, or None where the category has too few facts} for the whole grid."""
        from tqdm.auto import tqdm

        return {key: self.unit(key)
                for key in tqdm(self.keys(), desc=f"grid {self.run.name}", disable=not self.run.exp.progress)}

    def table(self) -> pd.DataFrame:
        """Every unit of the grid, computed or reused: one row per run with its metrics."""
        rows = []
        for key, res in self.results().items():
            row = {"model": self.run.name, "kind": key.kind,
                   "category": pd.NA if key.category is None else key.category, "scale": str(key.scale),
                   "seed": key.seed}
            if res is None:
                row["status"] = "too few facts"
            else:
                row.update(res["metrics"])
                row.update(status="done", n_train=res["n_train"], seconds=res.get("_seconds"))
            rows.append(row)
        df = pd.DataFrame(rows)
        df["category"] = df["category"].astype("Int64")
        return df


def _set_buffer(model: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    owner, _, leaf = name.rpartition(".")
    model.get_submodule(owner).register_buffer(leaf, value, persistent=False)
