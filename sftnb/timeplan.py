"""``sftnb plan``'s time estimate: each stage's wall time on N GPUs, from measured throughputs and the run's work.

The work is counted from the params file as ``Experiment.work`` lists it: the facts of D_train / D_test / D_testood
(read from the data source, with the run's caps), the grid's runs, the evaluations and the restoration sweeps. The
rates come from ``resources/throughput.json``: per-GPU throughputs measured by ``benchmarks/gpu_suite.sh``, each row
naming its log (the embedded 135M model, and randomly initialised LLaMA shapes up to 8B from
``benchmarks/bench_sizes.py`` once a GPU session has measured them). Every step from those rows to this run is an
assumption, and ``format_time`` prints each one:

- each stage's rate comes from its row nearest in size, taken to this model at the same achieved FLOP rate:
  throughput x (measured params / params). A small model's decode is bound by host work (a step costs about the
  same whatever the batch), so from the 135M rows this reads long for 8B models;
- the stop rule is off in the probe row: generations are counted at the measured share of max_new_tokens;
- work is shared at unit granularity (``sftnb.infra.distributed``), so a stage takes its work / (N x one GPU's rate):
  perfect sharing, and for FSDP runs perfect scaling over the ranks; LoRA runs at the full-SFT sample rate;
- a grid scale ``all`` trains on a fifth of D_train per category (all of it for mixed / LoRA runs): the category
  sizes are known only after the probe.

Scaled from a small model, that estimate is an upper bound. ``floor`` gives the other side: the same tokens' matmul
FLOPs at the card's datasheet peak (``resources/gpu_peaks.json``), which no run can beat. A measured row of the
planned size (``bench_sizes.py`` on a GPU) is what narrows the two.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from importlib.resources import files

from .infra.errors import SftnbError

H = 3600.0


@dataclass
class StageTime:
    stage: str
    work: float           # items (generations, samples, questions)
    what: str             # what the items are
    seconds: float
    flops_per_weight: float = 0.0   # the stage's matmul FLOPs per matmul weight: 2 a token forward, 6 trained


def throughput_table() -> list[dict]:
    return json.loads(files("sftnb").joinpath("resources/throughput.json").read_text(encoding="utf-8"))["rows"]


def _row(stage: str, params: int) -> dict:
    """The measured row of ``stage`` nearest in size to a model of ``params`` parameters (on a log scale; the
    larger of two as near): scaling a rate by FLOPs errs the least from the nearest size."""
    rows = [r for r in throughput_table() if r["stage"] == stage]
    if not rows:
        raise SftnbError(f"resources/throughput.json has no measured {stage} row")
    return min(rows, key=lambda r: (abs(math.log(r["params"] / params)), -r["params"]))


def _size(params: int) -> str:
    return f"{params / 1e9:.2f}B" if params >= 1e9 else f"{params / 1e6:.0f}M"


def _scaling(stage: str, row: dict, params: int) -> str:
    """The assumption that takes ``row``'s rate to a model of ``params`` parameters."""
    ratio = row["params"] / params
    if 0.9 <= ratio <= 1.1:
        return f"{stage}: measured at this size ({_size(row['params'])}), used as it is"
    why = (f"; the {_size(row['params'])} row is bound by host work per step, not by the GPU, so this reads long "
           f"for a large model" if row["params"] < 1e9 and params > 1e9 else "")
    return (f"{stage}: scaled from {_size(row['params'])} to {_size(params)} params at the same achieved FLOP "
            f"rate (x {ratio:.4f}{why})")


def _counts(cfg) -> dict[str, int]:
    """Facts per set and mapping templates per fact, as ``Experiment.sets`` reads them."""
    from .data.sources import load_source, paper_splits

    d = cfg.data
    factset = load_source(d.source, d.path)
    caps = {"train": d.max_train_per_relation, "test": d.max_test_per_relation, "testood": d.max_testood_per_relation}
    sets = paper_splits(factset, caps, d.seed)
    n_map = cfg.probe.n_templates
    prompts = sum(min(n_map, len(factset.relations[f.relation].mapping_templates)) for s in sets.values() for f in s)
    return {**{k: len(v) for k, v in sets.items()}, "prompts": prompts}


def estimate(cfg, params: int, gpus: int, layers: int = 32, seq_len: int = 32) -> tuple[list[StageTime], list[str]]:
    """Each stage's wall time on ``gpus`` GPUs for a model of ``params`` parameters and ``layers`` decoder layers
    (``seq_len`` tokens a training sample, for the floor); and the assumptions."""
    n = _counts(cfg)
    p, g, r = cfg.probe, cfg.grid, cfg.restore
    rows = {st: _row(st, params) for st in ("probe", "sft", "eval")}
    per_gpu = lambda stage: rows[stage]["rate"] * rows[stage]["params"] / params     # noqa: E731  same FLOP rate
    n_models = len(cfg.models)
    # probe: each prompt sampled n_samples times (sampling), or one pass per lead-in depth (likelihood)
    probe = rows["probe"]
    new_share = probe["tokens_per_item"] / 32                   # the measured row ran max_new_tokens 32
    if p.method == "sampling":
        gens = n["prompts"] * p.n_samples
    else:                                                       # a teacher-forced pass ~ one short generation
        gens = n["prompts"] * (1 + (p.lead_in_depth if p.lead_ins else 0)) / p.max_new_tokens
        if p.method == "calibrated":
            gens += 2 * min(p.calibration_facts, n["train"] + n["test"] + n["testood"]) * p.n_templates * p.n_samples
    probe_s = gens * n_models * (p.max_new_tokens / 32) / (per_gpu("probe") * gpus)
    probe_f = 2 * gens * n_models * p.max_new_tokens * new_share
    # the grid: samples trained, questions answered per run
    all_per_category = n["train"] / 5
    samples, runs, evalq, sft_f = 0.0, 0, 0.0, 0.0
    test_q = n["test"] + n["testood"]
    for kind, scales in (("divided", g.scales), ("mixed", (g.mixed_scales or g.scales) if g.mixed else []),
                         ("lora", (g.lora_scales or g.scales) if g.lora else [])):
        cats = len(g.categories) if kind == "divided" else 1
        for s in scales:
            size = (all_per_category if kind == "divided" else n["train"]) if s == "all" else s
            k = cats * len(g.seeds_at(s))
            runs += k
            samples += k * size * cfg.sft.epochs
            sft_f += (4 if kind == "lora" else 6) * k * size * cfg.sft.epochs * seq_len    # LoRA: no weight grads
            evalq += k * (test_q + (size if cfg.eval.train_accuracy else 0))
    n_grid = len(cfg.grid_models)
    eval_rate = per_gpu("eval") * 16 / cfg.eval.max_new_tokens   # measured at <= 16 new tokens
    sft_s = n_grid * samples / (per_gpu("sft") * gpus)
    eval_s = n_grid * evalq / (eval_rate * gpus)
    # restoration: every kept divided run swept over k (each strategy), on its training set, and layer groups
    kept_scales = [s for s in g.keep_checkpoints if s in g.scales]
    kept = len(g.categories) * sum(len(g.seeds_at(s)) for s in kept_scales)
    size_of = lambda s: all_per_category if s == "all" else s   # noqa: E731
    train_q = sum(size_of(s) * len(g.seeds_at(s)) for s in kept_scales) * len(g.categories)
    layers_q = 0.0
    if kept_scales:                 # Table 11: the largest kept scale's models, one pass per group of layers
        n_layer_models = len(g.categories) * len(r.layer_seeds or g.seeds[:1])
        layers_q = n_layer_models * n["test"] * -(-layers // max(1, r.layer_group_size))
    restq = kept * len(r.strategies) * len(r.k_percents) * test_q + train_q * len(r.train_k_percents) + layers_q
    n_restore = len(cfg.restore_models)
    restore_s = n_restore * restq / (eval_rate * gpus)
    answer = 2 * cfg.eval.max_new_tokens                        # forward FLOPs per weight for one question
    stages = [StageTime("probe", gens * n_models, f"generations of <= {p.max_new_tokens} tokens", probe_s, probe_f),
              StageTime("sft", n_grid * samples, f"training samples in {runs * n_grid} runs", sft_s, n_grid * sft_f),
              StageTime("eval", n_grid * evalq, f"questions in {runs * n_grid} evaluations", eval_s,
                        n_grid * evalq * answer),
              StageTime("restore", n_restore * restq, f"questions in {kept * n_restore} restored models", restore_s,
                        n_restore * restq * answer)]
    assumptions = [
        *(f"measured: {st} {row['rate']:,} {row['unit']} on one {row['gpu']}, {row['model']} "
          f"({row['params'] / 1e6:,.0f}M params; {row['setting']}; {row['source']})" for st, row in rows.items()),
        *(_scaling(st, row, params) for st, row in rows.items()),
        f"probe samples run to the measured {new_share:.0%} of max_new_tokens (the stop rule, off in the "
        f"measured row, would end them sooner)",
        f"facts: D_train {n['train']:,}, D_test {n['test']:,}, D_testood {n['testood']:,} ({n['prompts']:,} probe "
        f"prompts); {n_models} model(s) probed, {n_grid} fine-tuned, {n_restore} restored",
        f"work shared at unit granularity over {gpus} GPU(s): stage time = work / ({gpus} x one GPU's rate); FSDP "
        f"runs scale linearly over their ranks; LoRA trains at the full-SFT rate",
        "grid scale 'all' = a fifth of D_train per category (all of D_train for mixed / LoRA)"]
    return stages, assumptions


def gpu_peaks() -> list[dict]:
    return json.loads(files("sftnb").joinpath("resources/gpu_peaks.json").read_text(encoding="utf-8"))["cards"]


def peak_card(gpu_memory_gb: float) -> dict | None:
    """The fastest listed card whose memory is within 10 % of ``gpu_memory_gb`` (none: None). Of the cards that
    memory could be, the fastest gives the lowest floor, so the floor holds whichever it is."""
    cards = [c for c in gpu_peaks() if abs(c["memory_gb"] - gpu_memory_gb) <= 0.1 * c["memory_gb"]]
    return max(cards, key=lambda c: c["bf16_tflops"], default=None)


def floor(stages: list[StageTime], matmul_params: int, gpus: int, card: dict) -> list[float]:
    """Each stage's compute floor in seconds: its matmul FLOPs (``flops_per_weight`` x the ``matmul_params``
    weights a token multiplies) at ``gpus`` x ``card``'s datasheet peak. Attention scores, prompts, padding and
    every non-matmul kernel are left out, and no GPU runs at its peak: a run takes longer."""
    return [st.flops_per_weight * matmul_params / (gpus * card["bf16_tflops"] * 1e12) for st in stages]


def _dur(seconds: float) -> str:
    """Hours to 2 decimals; seconds where that would print 0.00 h (a small run's floor)."""
    return f"{seconds / H:.2f} h" if seconds >= 36 else f"{seconds:.1f} s"


def format_time(stages: list[StageTime], assumptions: list[str], gpus: int,
                floors: tuple[dict, list[float]] | None = None) -> str:
    lines = [f"time on {gpus} GPU(s), estimated from measured throughputs (assumptions below):"]
    for st in stages:
        lines.append(f"  {st.stage:<8} {st.seconds / H:8.1f} h   {st.work:,.0f} {st.what}")
    lines.append(f"  {'total':<8} {sum(s.seconds for s in stages) / H:8.1f} h")
    if floors is not None:
        card, secs = floors
        each = ", ".join(f"{st.stage} {_dur(f)}" for st, f in zip(stages, secs))
        lines.append(f"  {'floor':<8} {_dur(sum(secs)):>10}   the same tokens' matmul FLOPs at {gpus} x {card['gpu']}'s "
                     f"datasheet peak, {card['bf16_tflops']:,} TFLOP/s dense bf16 ({each})")
    lines += [f"  assumption: {a}" for a in assumptions]
    if floors is not None:
        lines.append(f"  assumption: floor: 2 FLOPs per matmul weight per token forward (probe: the generated "
                     f"tokens above; eval, restore: every question decodes eval.max_new_tokens), 6 per trained "
                     f"token (4 for LoRA); attention, prompts, padding and non-matmul kernels left out; no GPU runs "
                     f"at its peak, so the run takes longer than this ({card['source']})")
    return "\n".join(lines)


def plan_text(cfg, gpus: int | None = None, gpu_memory: float | None = None,
              host_memory: float | None = None) -> tuple[str, bool]:
    """``sftnb plan``: (the memory plan of ``sftnb.plan`` with, on GPUs, the time estimate before its last line
    (fits / does not fit), whether the run fits)."""
    from .plan import format_plan, plan_from_config

    p = plan_from_config(cfg, gpus, gpu_memory, host_memory)
    lines = format_plan(p).splitlines()
    if not p.settings.on_cpu:
        sh, s = p.shape, p.settings
        try:
            stages, assumptions = estimate(cfg, sh.params, s.gpus, sh.layers, s.seq_len)
        except SftnbError as e:
            lines.insert(-1, f"time: not estimated ({e})")
        else:
            card = peak_card(s.gpu_memory_gb)       # the weights a token multiplies: projections and the lm_head
            floors = (card, floor(stages, sh.matmul_params(), s.gpus, card)) if card else None
            lines[-1:-1] = format_time(stages, assumptions, s.gpus, floors).splitlines()
            if card is None:
                lines.insert(-1, f"  floor: not computed (no card of about {s.gpu_memory_gb:g} GB in "
                                 f"sftnb/resources/gpu_peaks.json)")
    return "\n".join(lines), p.fits

