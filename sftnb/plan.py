"""``sftnb plan``: will a params file's work fit, before any work? From the main model's config.json alone.

Each stage (probe, SFT, LoRA SFT, evaluation, restoration) gets its per-device peak from the formulas of
``sftnb.lm.memory`` (documented there, with their assumptions and how they were checked), the host its copy of the
pre-trained reference. When something does not fit, ``plan`` searches the changes a user can make, in order of cost --
more GPUs with ``sft.strategy: fsdp``, ``sft.optimizer: adamw_8bit``, ``sft.gradient_checkpointing: true``, a smaller
``run.batch_tokens``, and last ``sft.precision: bf16`` (which leaves the paper's recipe) -- and advises the cheapest
sets of them that make the whole plan fit, each checked by planning again, or says that even all of them do not.
``format_plan`` ends with the line ``fits`` or ``does not fit``; ``sftnb plan`` exits 0 or 1 accordingly.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from .infra.errors import SftnbError
from .lm.memory import (GB, USABLE, Estimate, ModelShape, PlanSettings, activation_memory, eval_memory, fmt_gb,
                     generation_peak, host_memory, lora_memory, model_shape, probe_memory, restore_memory,
                     scoring_peak, sft_memory)

__all__ = ["Plan", "plan", "format_plan", "plan_from_config", "read_config_json", "PlanSettings", "ModelShape",
           "model_shape", "Estimate", "probe_memory", "sft_memory", "lora_memory", "eval_memory", "restore_memory",
           "host_memory", "activation_memory", "generation_peak", "scoring_peak", "GB"]


# ------------------------------------------------------------------------------------------------ the plan
@dataclass
class Plan:
    shape: ModelShape
    settings: PlanSettings
    stages: dict[str, Estimate]               # per device
    host: Estimate
    capacity: int                             # usable bytes per device
    fits: bool
    advice: list[str] = field(default_factory=list)
    fixes: list[dict] = field(default_factory=list)    # the PlanSettings changes behind each advice line

    @property
    def per_device(self) -> dict[str, int]:
        """Bytes per device of each stage."""
        return {name: e.total for name, e in self.stages.items()}

    @property
    def peak(self) -> int:
        return max(self.per_device.values())

    def over(self) -> list[str]:
        """What does not fit: stage names, and "host". On a CPU every stage shares the RAM with the host copy."""
        s = self.settings
        room = self.capacity - (self.host.total if s.on_cpu else 0)
        over = [name for name, e in self.stages.items() if e.total > room]
        host_room = self.capacity if s.on_cpu else s.host_memory_gb and int(s.host_memory_gb * GB * USABLE)
        return over + (["host"] if host_room and self.host.total > host_room else [])


def _evaluate(shape: ModelShape, s: PlanSettings) -> Plan:
    stages = {"probe": probe_memory(shape, s), "sft": sft_memory(shape, s)}
    if s.lora:
        stages["sft-lora"] = lora_memory(shape, s)
    stages |= {"eval": eval_memory(shape, s), "restore": restore_memory(shape, s)}
    p = Plan(shape, s, stages, host_memory(shape, s), int(s.gpu_memory_gb * GB * USABLE), True)
    p.fits = not p.over()
    return p


def _changes(s: PlanSettings) -> list[tuple[str, list[tuple[str, dict]]]]:
    """Changes that lower memory, in order of cost, each with its values from mildest to strongest."""
    out = []
    if not s.on_cpu:
        more = [n for n in (2, 4, 8, 16, 32, 64) if n > s.gpus or (n == s.gpus and s.strategy != "fsdp")]
        out.append(("fsdp", [(f"sft.strategy: fsdp on {n} GPUs (--gpus {n})", {"strategy": "fsdp", "gpus": n})
                             for n in more]))
        if s.optimizer == "adamw":
            out.append(("8bit", [("sft.optimizer: adamw_8bit", {"optimizer": "adamw_8bit"})]))
    if not s.gradient_checkpointing:
        out.append(("gc", [("sft.gradient_checkpointing: true", {"gradient_checkpointing": True})]))
    if s.batch_tokens is not None:                     # auto sizes itself to the device
        smaller = [s.batch_tokens >> k for k in range(1, 12) if s.batch_tokens >> k >= 512]
        out.append(("tokens", [(f"run.batch_tokens: {t}", {"batch_tokens": t}) for t in smaller]))
    if s.precision != "bf16":
        out.append(("bf16", [("sft.precision: bf16 (not the paper's fp32-master recipe)", {"precision": "bf16"})]))
    return [c for c in out if c[1]]


def _advise(shape: ModelShape, s: PlanSettings, limit: int = 3) -> tuple[list[str], list[dict]]:
    """Minimal sets of changes (cheapest first) that make the plan fit, each checked by re-planning."""
    changes = _changes(s)
    found: list[set[str]] = []
    lines, fixes = [], []
    for size in range(1, len(changes) + 1):
        for combo in itertools.combinations(changes, size):
            names = {name for name, _ in combo}
            if any(f <= names for f in found):
                continue
            for values in itertools.product(*(vals for _, vals in combo)):
                fix = {k: v for _, d in values for k, v in d.items()}
                trial = _evaluate(shape, replace(s, **fix))
                if trial.fits:
                    found.append(names)
                    lines.append(f"fits with: {' + '.join(label for label, _ in values)} "
                                 f"(largest stage {fmt_gb(trial.peak)} GB)")
                    fixes.append(fix)
                    break
            if len(lines) == limit:
                return lines, fixes
    if not lines:
        every = {k: v for _, vals in changes for k, v in vals[-1][1].items()}
        trial = _evaluate(shape, replace(s, **every))
        worst = ", ".join(f"{n} {fmt_gb(trial.stages[n].total if n in trial.stages else trial.host.total)} GB"
                          for n in trial.over())
        lines.append(f"does not fit even with all of: {'; '.join(vals[-1][0] for _, vals in changes)} ({worst})")
    return lines, fixes


def plan(shape: ModelShape, settings: PlanSettings) -> Plan:
    """Every stage's per-device peak, the host copy, whether it all fits, and checked advice when it does not."""
    p = _evaluate(shape, settings)
    if not p.fits:
        p.advice, p.fixes = _advise(shape, settings)
    return p


def format_plan(p: Plan) -> str:
    """A table (stage | per-device GB | notes), the advice, then a last line ``fits`` or ``does not fit``."""
    s, sh = p.settings, p.shape
    where = f"CPU, {s.gpu_memory_gb:.1f} GB RAM" if s.on_cpu else f"{s.gpus} x {s.gpu_memory_gb:.1f} GB GPU"
    ckpt = ", gradient checkpointing" if s.gradient_checkpointing else ""
    lines = [f"model: {sh.params:,} parameters ({sh.layers} layers, hidden {sh.hidden}, intermediate "
             f"{sh.intermediate}, heads {sh.heads}/{sh.kv_heads} kv, vocab {sh.vocab}, "
             f"{'tied' if sh.tied else 'untied'})",
             f"device: {where}, usable {fmt_gb(p.capacity)} GB each; sft: {s.strategy}, {s.optimizer}, "
             f"{s.precision}, batch {s.batch_size} x {s.seq_len} tokens{ckpt}; run.batch_tokens "
             f"{s.batch_tokens or 'auto (each stage fills its device)'}",
             f"{'stage':<10} {'GB/device':>10}  notes"]
    over = set(p.over())
    for name, e in [*p.stages.items(), ("host", p.host)]:
        mark = "!" if name in over else " "
        lines.append(f"{name:<9}{mark} {fmt_gb(e.total):>10}  {e.note()}")
    if s.on_cpu:
        lines.append("(CPU: the device is the host, so the largest stage and the host copy share the RAM)")
    if s.optimizer == "paged_adamw_8bit":
        lines.append("(paged_adamw_8bit: its states page out to host RAM when the device runs short)")
    return "\n".join([*lines, *p.advice, "fits" if p.fits else "does not fit"])


# ------------------------------------------------------------------------------------------------ from params
SMOLLM2_135M = {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                 "num_key_value_heads": 3, "head_dim": 64, "vocab_size": 49152, "tie_word_embeddings": True,
                 "max_position_embeddings": 8192}    # the embedded model's config.json, before its first conversion


def read_config_json(path: str) -> dict:
    """config.json of a model path ("tiny-random", "smollm2-135m" or a folder), without loading weights."""
    from .lm.models import EMBEDDED, TINY, cache_dir, model_folder, tiny_model

    if path == TINY:
        return tiny_model()[0].config.to_dict()          # ~100k random parameters: cheaper than re-deriving
    if path == EMBEDDED:
        cached = cache_dir() / "smollm2-135m-instruct" / "config.json"
        return json.loads(cached.read_text()) if cached.is_file() else dict(SMOLLM2_135M)
    folder = model_folder(path)
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SftnbError(f"{folder / 'config.json'}: unreadable ({e})") from None


def mem_total_gb() -> float:
    """This machine's RAM (/proc/meminfo MemTotal) in GB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024 / GB
    except OSError:
        pass
    raise SftnbError("cannot read /proc/meminfo: give --gpu-memory GB (the RAM to plan against)")


def _dtype_bytes(name: str, gpu: bool, native_bf16: bool) -> int:
    if name == "auto":
        return 2 if gpu else 4
    if name == "fastest":
        return 2 if gpu or native_bf16 else 4
    return 4 if name == "float32" else 2


def plan_from_config(cfg, gpus: int | None = None, gpu_memory_gb: float | None = None,
                     host_memory_gb: float | None = None) -> Plan:
    """The plan of an ExperimentConfig's main model (config.json only). GPU or CPU follows run.device (auto: a GPU
    plan when this machine has CUDA or ``gpus`` is given); GPU count and memory default to this machine's, a CPU
    plan's memory to its RAM (MemTotal)."""
    import torch

    from .lm import TINY
    from .lm.models import cpu_has_native_bf16

    if gpus is not None and gpus < 1:
        raise SftnbError(f"--gpus must be at least 1 (got {gpus})")
    for what, v in (("--gpu-memory", gpu_memory_gb), ("--host-memory", host_memory_gb)):
        if v is not None and not v > 0:
            raise SftnbError(f"{what} must be > 0 GB (got {v})")
    shape = model_shape(read_config_json(cfg.main_model.path))
    dev = cfg.run.device
    if dev == "cpu" and gpus is not None:
        raise SftnbError("run.device is 'cpu': --gpus applies to GPU runs only")
    gpu = dev.startswith("cuda") or (dev == "auto" and (torch.cuda.is_available() or gpus is not None))
    if gpu_memory_gb is None:
        if not gpu:
            gpu_memory_gb = mem_total_gb()
        elif torch.cuda.is_available():
            gpu_memory_gb = torch.cuda.get_device_properties(0).total_memory / GB
        else:
            raise SftnbError(f"run.device is {dev!r} but this machine has no GPU: give --gpu-memory GB")
    if gpus is None:
        gpus = torch.cuda.device_count() if gpu and torch.cuda.is_available() else 1
    native = not gpu and cpu_has_native_bf16()
    sft = cfg.sft
    precision = {"auto": "bf16-mixed" if gpu else "fp32",
                 "fastest": "bf16-mixed" if gpu or native else "fp32"}.get(sft.precision, sft.precision)
    r = cfg.restore
    s = PlanSettings(
        gpus=gpus, gpu_memory_gb=gpu_memory_gb, on_cpu=not gpu, host_memory_gb=host_memory_gb,
        strategy=sft.strategy, optimizer=sft.optimizer, precision=precision,
        gradient_checkpointing=sft.gradient_checkpointing, batch_size=sft.batch_size,
        train_bytes=4 if cfg.run.dtype in ("auto", "float32") else 2,
        lora=cfg.grid.lora, lora_r=sft.lora.r, lora_targets=tuple(sft.lora.target_modules),
        infer_bytes=_dtype_bytes(cfg.run.inference_dtype, gpu, native),
        batch_tokens=None if cfg.run.batch_tokens == "auto" else cfg.run.batch_tokens,
        probe_samples=cfg.probe.n_samples, probe_new_tokens=cfg.probe.max_new_tokens,
        probe_method=cfg.probe.method, eval_new_tokens=cfg.eval.max_new_tokens,
        restore_k=max([*r.k_percents, *r.train_k_percents, r.redundant_k_percent]),
        restore_region=r.region, layer_group_size=r.layer_group_size,
        template_shared=cfg.main_model.path != TINY and not cfg.main_model.quantization)
    return plan(shape, s)
