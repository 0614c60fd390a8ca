"""`sftnb plan`: exact parameter counts, the 8B decisions, checked advice, estimates against measured memory, CLI."""
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sftnb.cli import main
from sftnb.config import load_config, validate
from sftnb.infra.errors import SftnbError
from sftnb.plan import (GB, PlanSettings, activation_memory, format_plan, generation_peak, model_shape, plan,
                        plan_from_config, probe_memory, scoring_peak, sft_memory)

ROOT = Path(__file__).resolve().parents[1]
LLAMA3_8B = {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False,
             "max_position_embeddings": 8192, "model_type": "llama"}
PAPER = PlanSettings(batch_tokens=65536, probe_new_tokens=32, lora=True)   # one 80 GB GPU, bf16-mixed, AdamW


# ------------------------------------------------------------------------------------------ parameter counts
def test_llama3_8b_parameter_count():
    assert model_shape(LLAMA3_8B).params == 8_030_261_248


@pytest.mark.parametrize("cfg", [
    LLAMA3_8B,
    dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
         vocab_size=384, tie_word_embeddings=False),                               # sftnb.lm.models.tiny_model
    dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
         head_dim=64, vocab_size=49152, tie_word_embeddings=True),                 # SmolLM2-135M (tied)
    dict(hidden_size=96, intermediate_size=200, num_hidden_layers=3, num_attention_heads=6, num_key_value_heads=6,
         head_dim=24, vocab_size=1000, tie_word_embeddings=True, attention_bias=True, mlp_bias=True),
    dict(hidden_size=128, intermediate_size=352, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=1,
         head_dim=32, vocab_size=777, tie_word_embeddings=False, attention_bias=True),
], ids=["llama3-8b", "tiny", "smollm2-tied", "biases-headdim", "mqa-untied"])
def test_parameter_count_equals_transformers(cfg):
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in cfg.items() if k != "model_type"}))
    assert model_shape(cfg).params == sum(p.numel() for p in model.parameters())


def test_missing_key_is_one_line_error():
    with pytest.raises(SftnbError, match="hidden_size"):
        model_shape({k: v for k, v in LLAMA3_8B.items() if k != "hidden_size"})


# ------------------------------------------------------------------------------------------ 8B decisions
def test_8b_full_sft_does_not_fit_one_80gb_gpu():
    p = plan(model_shape(LLAMA3_8B), PAPER)
    assert not p.fits and "sft" in p.over()
    assert p.stages["sft"].total > 100 * GB          # 16 B/param: fp32 weights + grads + AdamW
    assert format_plan(p).splitlines()[-1] == "does not fit"


def test_8b_fsdp_on_8_gpus_fits():
    p = plan(model_shape(LLAMA3_8B), replace(PAPER, gpus=8, strategy="fsdp"))
    assert p.fits and p.advice == []
    assert p.stages["sft"].total < 30 * GB
    assert format_plan(p).splitlines()[-1] == "fits"


def test_8bit_adamw_quarters_the_optimizer_states():
    shape = model_shape(LLAMA3_8B)
    full = sft_memory(shape, PAPER).parts["adamw states"]
    small = sft_memory(shape, replace(PAPER, optimizer="adamw_8bit")).parts["adamw_8bit states"]
    assert 3.8 < full / small <= 4


def test_gradient_checkpointing_reduces_activations():
    shape = model_shape(LLAMA3_8B)
    s = replace(PAPER, batch_size=64, seq_len=128)
    plain = activation_memory(shape, s, 64)
    ckpt = activation_memory(shape, replace(s, gradient_checkpointing=True), 64)
    assert ckpt < plain / 5
    # at batch 64 x 128 the activations outweigh the gradients: checkpointing lowers the SFT peak itself
    assert sft_memory(shape, replace(s, gradient_checkpointing=True)).total < sft_memory(shape, s).total


def test_advice_is_checked_and_cheapest_first():
    shape = model_shape(LLAMA3_8B)
    p = plan(shape, PAPER)
    assert p.advice and len(p.advice) == len(p.fixes)
    names = {"strategy": "sft.strategy", "gpus": "--gpus", "optimizer": "sft.optimizer", "precision": "sft.precision",
             "gradient_checkpointing": "sft.gradient_checkpointing", "batch_tokens": "run.batch_tokens"}
    for line, fix in zip(p.advice, p.fixes):
        assert plan(shape, replace(PAPER, **fix)).fits, line
        assert all(names[k] in line for k in fix), line
    assert p.fixes[0] == {"strategy": "fsdp", "gpus": 2}        # more GPUs first: it changes no result
    # 8-bit AdamW alone leaves fp32 weights + grads (64 GB) + 2 B/param: not advised on its own
    assert {"optimizer": "adamw_8bit"} not in p.fixes
    assert not plan(shape, replace(PAPER, optimizer="adamw_8bit")).fits


def test_advice_says_when_nothing_helps():
    p = plan(model_shape(LLAMA3_8B), replace(PAPER, gpu_memory_gb=16))
    assert not p.fits and p.fixes == []
    assert p.advice[0].startswith("does not fit even with all of:")


def test_probe_batch_tokens_advice_for_a_small_card():
    shape = model_shape(LLAMA3_8B)
    s = replace(PAPER, gpus=8, strategy="fsdp", gpu_memory_gb=40, batch_tokens=1 << 19)
    p = plan(shape, s)
    assert not p.fits and {"probe", "eval"} <= set(p.over())
    assert any("run.batch_tokens" in line for line in p.advice)
    assert all(plan(shape, replace(s, **fix)).fits for fix in p.fixes)


# ------------------------------------------------------------------------------------------ measured accuracy
# Clean subprocesses: the peak RSS increase over the RSS just before the model is built, after imports and a warm-up
# run on sftnb's tiny model (the libraries' one-time buffers: thread pools, kernel caches; on a GPU the CUDA context,
# which max_memory_allocated leaves out too). glibc's mmap threshold is fixed at 64 KiB so that freed tensors leave
# the process, as freed blocks leave max_memory_allocated; with the default dynamic threshold freed activations stay
# in the heap (see sftnb.plan's docstring).
_COMMON = r"""
import json, sys
def rss(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from sftnb.data.builtin import load_builtin
from sftnb.lm.models import tiny_model, tiny_tokenizer
args = json.loads(sys.argv[1])
tok, facts = tiny_tokenizer(), load_builtin().facts
h = args["hidden"]
config = LlamaConfig(vocab_size=len(tok), hidden_size=h, intermediate_size=4 * h, num_hidden_layers=8,
                     num_attention_heads=h // 64, num_key_value_heads=args["kv_heads"], tie_word_embeddings=False,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
"""
_TRAIN = _COMMON + r"""
from sftnb.config import SFTConfig
from sftnb.sft import IGNORE, collate, example_ids, train
pairs = [(f.question, f.answers[0]) for f in facts[: 2 * args["batch"]]]           # two steps: AdamW states exist
encoded = [example_ids(tok, q, a) for q, a in pairs]
batches = [collate(encoded[i:i + args["batch"]], tok.pad_token_id) for i in (0, args["batch"])]
width = max(b["labels"].shape[1] for b in batches)
keep = max(b["labels"].shape[1] - int((b["labels"] != IGNORE).int().argmax(-1).min()) + 1 for b in batches)
warm = tiny_model(tokenizer=tok)[0]        # the libraries' one-time buffers (thread pools, kernel caches) first
train(warm, tok, pairs[: args["batch"]], SFTConfig(batch_size=args["batch"], precision=args["precision"]),
      progress=False)
del warm
base = rss("VmRSS:")
reset_peak()
model = LlamaForCausalLM(config)
if args["checkpointing"]:
    model.activation_checkpointing_enable()
train(model, tok, pairs, SFTConfig(batch_size=args["batch"], precision=args["precision"]), progress=False)
print(json.dumps({"measured": rss("VmHWM:") - base, "width": width, "keep": keep, "config": config.to_dict()}))
"""
_INFER = _COMMON + r"""
from collections import Counter
from sftnb.lm.generation import generate
from sftnb.lm.scoring import first_token_logits
from sftnb.sft import prompt_ids
prompts = [prompt_ids(tok, f.question) for f in facts]
length = Counter(map(len, prompts)).most_common(1)[0][0]
same = [p for p in prompts if len(p) == length]                  # equal lengths: one full batch, no padding
n, new, bt = args["n"], args["new"], args["batch_tokens"]
warm = tiny_model(tokenizer=tok)[0].eval()  # the libraries' one-time buffers (thread pools, kernel caches) first
generate(warm, same[:64], n=n, temperature=0.7, max_new_tokens=new, eos_token_ids=[], progress=False)
first_token_logits(warm, same[:64])
del warm
base = rss("VmRSS:")
reset_peak()
model = LlamaForCausalLM(config).eval()
weights = rss("VmRSS:") - base
generate(model, same[: bt // (n * (length + new))], n=n, temperature=0.7, max_new_tokens=new, eos_token_ids=[],
         batch_tokens=bt, progress=False)
gen = rss("VmHWM:") - base
score_tokens = args["score_tokens"]
rows = score_tokens // length
before = rss("VmRSS:")
reset_peak()
first_token_logits(model, (same * (1 + rows // len(same)))[:rows], batch_tokens=score_tokens)
print(json.dumps({"weights": weights, "generate": gen, "score": rss("VmHWM:") - before, "length": length,
                  "config": config.to_dict()}))
"""


def _native_bf16() -> bool:
    from sftnb.lm.models import cpu_has_native_bf16
    return cpu_has_native_bf16()


# (hidden, batch, gradient checkpointing, precision): the paper's regime (gradients outweigh activations, 32 M
# parameters), an activation-heavy batch, the same with checkpointing, and bf16 autocast (the GPU's precision)
SFT_CASES = {"states-32M": (512, 4, False, "fp32"), "activations": (256, 16, False, "fp32"),
             "checkpointing": (256, 16, True, "fp32"), "bf16-mixed": (256, 16, False, "bf16-mixed")}
INFER = dict(hidden=256, kv_heads=4, n=8, new=8, batch_tokens=16384, score_tokens=8192)


@pytest.fixture(scope="module")
def measurements():
    """Every measurement subprocess started at once (one thread each: the peaks are per process), awaited by name."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false")
    jobs = {name: (_TRAIN, dict(hidden=h, kv_heads=4, batch=b, checkpointing=c, precision=p))
            for name, (h, b, c, p) in SFT_CASES.items() if p == "fp32" or _native_bf16()}
    jobs["inference"] = (_INFER, INFER)
    procs = {name: subprocess.Popen([sys.executable, "-c", script, json.dumps(args)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, env=env)
             for name, (script, args) in jobs.items()}

    def result(name: str) -> dict:
        out, err = procs[name].communicate(timeout=600)
        assert procs[name].returncode == 0, err[-3000:]
        return json.loads(out.strip().splitlines()[-1])

    yield result
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow                      # each case trains a small model in a subprocess and measures its peak
@pytest.mark.parametrize("case", [*SFT_CASES][:3] + [pytest.param("bf16-mixed", marks=pytest.mark.skipif(
    not _native_bf16(), reason="bf16 autocast is emulated (slow) on a CPU without AVX512-BF16/AMX"))])
def test_sft_estimate_within_25_percent_of_measured(case, measurements):
    hidden, batch, checkpointing, precision = SFT_CASES[case]
    m = measurements(case)
    s = PlanSettings(on_cpu=True, precision=precision, batch_size=batch, seq_len=m["width"],
                     answer_tokens=m["keep"] - 1, gradient_checkpointing=checkpointing)
    estimate = sft_memory(model_shape(m["config"]), s).total
    error = (estimate - m["measured"]) / m["measured"]
    print(f"sft {hidden=} {batch=} {checkpointing=} {precision}: estimate {estimate / 2**20:.0f} MiB, "
          f"measured {m['measured'] / 2**20:.0f} MiB, error {error:+.1%}")
    assert abs(error) <= 0.25


@pytest.mark.slow
def test_inference_estimates_within_25_percent_of_measured(measurements):
    """Generation (weights + a full batch's KV cache dominate) and a scoring forward (first_token_logits)."""
    m = measurements("inference")
    shape = model_shape(m["config"])
    bt, st = INFER["batch_tokens"], INFER["score_tokens"]
    s = PlanSettings(on_cpu=True, infer_bytes=4, train_bytes=4, batch_tokens=bt, prompt_tokens=m["length"],
                     probe_samples=INFER["n"], probe_new_tokens=INFER["new"])
    estimates = {"generate": probe_memory(shape, s).total,     # weights + generation peak
                 "score": scoring_peak(shape, 4, st, (st // m["length"]) * shape.vocab, 8).total}
    for what, estimate in estimates.items():
        error = (estimate - m[what]) / m[what]
        print(f"{what}: estimate {estimate / 2**20:.0f} MiB, measured {m[what] / 2**20:.0f} MiB, error {error:+.1%}")
        assert abs(error) <= 0.25, what
    # the KV cache is what the generation estimate is mostly about
    assert generation_peak(shape, 4, bt, m["length"], INFER["new"], INFER["n"], True).parts["KV cache"] > m["weights"]


# ------------------------------------------------------------------------------------------ config and CLI
def _params(tmp_path: Path, model_path: str, name: str = "params.yaml", **sections) -> Path:
    import yaml

    raw = {"run_name": "plan", "models": [{"name": "m", "path": model_path}], **sections}
    p = tmp_path / name
    p.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return p


def _llama3_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "Meta-Llama-3-8B"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA3_8B), encoding="utf-8")
    return folder


def test_sft_schema_fields():
    cfg = validate({"sft": {"strategy": "fsdp", "optimizer": "paged_adamw_8bit", "gradient_checkpointing": True,
                            "precision": "bf16"}})
    assert (cfg.sft.strategy, cfg.sft.optimizer, cfg.sft.gradient_checkpointing, cfg.sft.precision) == \
        ("fsdp", "paged_adamw_8bit", True, "bf16")
    assert (validate({}).sft.strategy, validate({}).sft.optimizer) == ("single", "adamw")
    for bad in ({"strategy": "ddp"}, {"optimizer": "sgd"}, {"precision": "fp8"}):
        with pytest.raises(SftnbError, match="sft"):
            validate({"sft": bad})


def test_embedded_model_shape_without_conversion():
    from sftnb.lm.models import cache_dir
    from sftnb.plan import SMOLLM2_135M, read_config_json

    cached = cache_dir() / "smollm2-135m-instruct" / "config.json"
    if not cached.is_file():
        pytest.skip("the embedded model was never converted here")
    assert model_shape(read_config_json("smollm2-135m")) == model_shape(SMOLLM2_135M)


def test_paper_params_file_plans_like_the_constructed_8b(tmp_path):
    cfg = load_config(ROOT / "params" / "paper-llama3-8b.yaml")
    cfg.models[0].path = str(_llama3_folder(tmp_path))
    assert cfg.sft.strategy == "fsdp"                        # the paper's protocol is an 8-GPU FSDP run
    assert plan_from_config(cfg, gpus=8, gpu_memory_gb=80).fits
    assert not plan_from_config(cfg, gpus=1, gpu_memory_gb=80).fits    # sharded over one GPU: nothing saved
    cfg.sft.strategy = "single"
    one = plan_from_config(cfg, gpus=1, gpu_memory_gb=80)
    assert not one.fits and one.settings.precision == "bf16-mixed" and one.settings.batch_tokens is None   # auto
    assert one.stages["sft"].total == sft_memory(model_shape(LLAMA3_8B), PAPER).total


def test_auto_batch_tokens_fill_the_device_and_fit():
    """run.batch_tokens: auto: each inference stage's budget fills USABLE of the device beside what it holds,
    as batching.resolve_budget sizes it from the free memory; a fixed budget is planned as set."""
    shape = model_shape(LLAMA3_8B)
    s = replace(PAPER, gpus=8, strategy="fsdp", batch_tokens=None)
    p = plan(shape, s)
    assert p.fits
    for stage in ("probe", "eval", "restore"):
        assert 0.97 * p.capacity <= p.stages[stage].total <= p.capacity, stage
    assert plan(shape, replace(s, gpu_memory_gb=141)).stages["probe"].parts["KV cache"] > \
        1.5 * p.stages["probe"].parts["KV cache"]
    cpu = plan(shape, replace(s, on_cpu=True, gpu_memory_gb=1000))
    assert cpu.stages["probe"].total == probe_memory(shape, replace(s, on_cpu=True, batch_tokens=16384)).total


def test_cli_exit_status_fits_and_does_not_fit(tmp_path, capsys):
    folder = _llama3_folder(tmp_path)
    params = _params(tmp_path, str(folder), run={"device": "cuda", "batch_tokens": 65536})
    assert main(["plan", str(params), "--gpus", "1", "--gpu-memory", "80"]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "does not fit"
    fsdp = _params(tmp_path, str(folder), "fsdp.yaml", run={"device": "cuda", "batch_tokens": 65536},
                   sft={"strategy": "fsdp"})
    assert main(["plan", str(fsdp), "--gpus", "8", "--gpu-memory", "80"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "fits"


def test_cli_cpu_plan_uses_this_machines_ram(tmp_path, capsys):
    params = _params(tmp_path, "tiny-random", run={"device": "cpu"})
    assert main(["plan", str(params)]) == 0
    out = capsys.readouterr().out
    assert "CPU" in out and out.splitlines()[-1] == "fits"


@pytest.mark.parametrize("case", ["missing-params", "zero-gpus", "zero-memory", "no-config-json", "cuda-no-memory",
                                  "gpus-on-cpu"])
def test_cli_bad_input_is_status_2(case, tmp_path, capsys):
    empty = tmp_path / "empty-model"
    empty.mkdir()
    gpu_params = _params(tmp_path, str(_llama3_folder(tmp_path)), run={"device": "cuda"})
    argv = {"missing-params": ["plan", str(tmp_path / "nope.yaml")],
            "zero-gpus": ["plan", str(gpu_params), "--gpus", "0", "--gpu-memory", "80"],
            "zero-memory": ["plan", str(gpu_params), "--gpu-memory", "0"],
            "no-config-json": ["plan", str(_params(tmp_path, str(empty), "empty.yaml"))],
            "cuda-no-memory": ["plan", str(gpu_params)],
            "gpus-on-cpu": ["plan", str(_params(tmp_path, "tiny-random", "cpu.yaml", run={"device": "cpu"})),
                            "--gpus", "2"]}[case]
    if case == "cuda-no-memory" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU to read the memory from")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("sftnb: error: ") and len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------------------ time plan
def _llama3_time_params(tmp_path: Path) -> Path:
    """LLaMA-3-8B's config on GPUs, FSDP, built-in facts (20/10/10 a relation), 2 templates x 10 samples, scales
    8 and 16 with mixed and LoRA runs: the time plan's test run."""
    return _params(tmp_path, str(_llama3_folder(tmp_path)), run={"device": "cuda"},
                   data={"source": "builtin", "max_train_per_relation": 20, "max_test_per_relation": 10,
                         "max_testood_per_relation": 10},
                   probe={"n_templates": 2, "n_samples": 10}, sft={"strategy": "fsdp"},
                   grid={"scales": [8, 16], "seeds": [0]})


def test_time_plan_counts_the_work_and_prints_its_assumptions(tmp_path, capsys):
    """Issue 23: ``sftnb plan`` on GPUs also estimates each stage's wall time from resources/throughput.json (only
    measured rows, each naming its log), printing every assumption, and still ends with fits / does not fit."""
    from sftnb import timeplan

    rows = timeplan.throughput_table()
    assert {r["stage"] for r in rows} >= {"probe", "sft", "eval"}
    assert all((ROOT / r["source"]).is_file() and str(r["rate"]) in (ROOT / r["source"]).read_text() for r in rows)
    params = _llama3_time_params(tmp_path)
    cfg = load_config(params)
    one, _ = timeplan.estimate(cfg, 8_030_261_248, 1)
    eight, assumptions = timeplan.estimate(cfg, 8_030_261_248, 8)
    for a, b in zip(one, eight):
        assert a.work == b.work and a.seconds == pytest.approx(8 * b.seconds)      # shared over the GPUs
    counts = timeplan._counts(cfg)
    assert one[0].work == counts["prompts"] * 10                                    # sampling: N_map x N_sample
    assert one[1].work == 5 * (8 + 16) + (8 + 16) * 2                              # divided, mixed, lora samples
    row = timeplan._row("probe", 8_030_261_248)
    assert one[0].seconds == pytest.approx(one[0].work / (row["rate"] * row["params"] / 8_030_261_248))
    assert main(["plan", str(params), "--gpus", "8", "--gpu-memory", "80"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-1] == "fits"
    assert any(line.startswith("time on 8 GPU(s)") for line in out)
    assert sum(line.startswith("  assumption: ") for line in out) == len(assumptions) + 1 >= 6   # + the floor's
    assert any("call2_probe_2097152.log" in line for line in out)


def test_time_plan_prints_a_compute_floor_beside_its_estimate(tmp_path, capsys):
    """Scaled from the 135M rows the estimate reads long; ``sftnb plan`` also prints the floor on the other side:
    the same tokens' matmul FLOPs (2 a weight per token forward, 6 trained, 4 under LoRA) at the datasheet peak of
    the fastest listed card of that memory (resources/gpu_peaks.json, each card naming its datasheet). The floor
    is below the estimate; a memory no listed card has gets a line saying so, and the plan still fits."""
    from sftnb import timeplan

    cards = timeplan.gpu_peaks()
    assert all(c["source"].startswith("NVIDIA") and c["bf16_tflops"] > 0 for c in cards)
    assert timeplan.peak_card(80)["gpu"] == "NVIDIA H100 SXM"            # faster than the A100 80GB
    assert timeplan.peak_card(141)["gpu"] == "NVIDIA H200 SXM"
    assert timeplan.peak_card(48) is None
    params = _llama3_time_params(tmp_path)
    cfg = load_config(params)
    stages, _ = timeplan.estimate(cfg, 8_030_261_248, 8, seq_len=32)
    share = timeplan._row("probe", 8_030_261_248)["tokens_per_item"] / 32
    probe, sft, ev, rest = stages
    assert probe.flops_per_weight == pytest.approx(2 * probe.work * cfg.probe.max_new_tokens * share)
    assert sft.flops_per_weight == 6 * (5 * (8 + 16) + (8 + 16)) * 32 + 4 * (8 + 16) * 32     # divided, mixed; lora
    assert ev.flops_per_weight == 2 * ev.work * cfg.eval.max_new_tokens
    assert rest.flops_per_weight == 2 * rest.work * cfg.eval.max_new_tokens
    h100 = timeplan.peak_card(80)
    floors = timeplan.floor(stages, 7_500_000_000, 8, h100)
    assert floors[0] == pytest.approx(probe.flops_per_weight * 7.5e9 / (8 * 989.4e12))
    assert all(f < st.seconds or f == st.seconds == 0 for f, st in zip(floors, stages))   # no kept scale: 0
    assert main(["plan", str(params), "--gpus", "8", "--gpu-memory", "80"]) == 0
    out = capsys.readouterr().out.splitlines()
    line = next(line for line in out if line.startswith("  floor "))
    value, unit = line.split()[1:3]
    assert "8 x NVIDIA H100 SXM's datasheet peak" in line and 0 < float(value) * (3600 if unit == "h" else 1) < sum(st.seconds for st in stages)
    assert any(a.startswith("  assumption: floor: ") and "H100 datasheet" in a for a in out)
    assert out[-1] == "fits"
    assert main(["plan", str(params), "--gpus", "8", "--gpu-memory", "48"]) in (0, 1)
    out = capsys.readouterr().out.splitlines()
    assert "  floor: not computed (no card of about 48 GB in sftnb/resources/gpu_peaks.json)" in out
    assert out[-1] in ("fits", "does not fit")


def test_time_plan_takes_each_stage_from_its_nearest_measured_size(tmp_path, monkeypatch):
    """With rows measured at several sizes (benchmarks/bench_sizes.py), each stage's rate comes from its row
    nearest in size on a log scale, scaled by FLOPs from there; a row of the planned size is used as it is, and
    the assumptions say which row and which scaling each stage took."""
    from sftnb import timeplan

    def row(stage, params, rate):
        return {"gpu": "G", "model": f"m{params}", "params": params, "stage": stage, "rate": rate, "unit": "u/s",
                "tokens_per_item": 32, "setting": "s", "source": "log"}
    rows = [row("probe", 135_000_000, 3000.0), row("probe", 8_000_000_000, 900.0),
            row("eval", 135_000_000, 3000.0), row("eval", 1_200_000_000, 2000.0),
            row("sft", 3_200_000_000, 40.0), row("sft", 1_200_000_000, 90.0)]
    monkeypatch.setattr(timeplan, "throughput_table", lambda: rows)
    assert timeplan._row("probe", 8_030_261_248)["params"] == 8_000_000_000
    assert timeplan._row("probe", 1_000_000_000)["params"] == 135_000_000        # ln 7.4 < ln 8
    assert timeplan._row("sft", 8_030_261_248)["params"] == 3_200_000_000
    assert timeplan._row("eval", 3_000_000_000)["params"] == 1_200_000_000
    params = _params(tmp_path, "tiny-random", data={"source": "builtin", "max_train_per_relation": 20,
                                                   "max_test_per_relation": 10, "max_testood_per_relation": 10},
                     probe={"method": "sampling", "n_templates": 2, "n_samples": 10},
                     grid={"scales": [8], "seeds": [0]})
    cfg = load_config(params)
    stages, assumptions = timeplan.estimate(cfg, 8_000_000_000, 1)
    probe, sft = stages[0], stages[1]
    assert probe.seconds == pytest.approx(probe.work * (cfg.probe.max_new_tokens / 32) / 900.0)
    assert sft.seconds == pytest.approx(sft.work / (40.0 * 3.2 / 8.0))
    assert "probe: measured at this size (8.00B), used as it is" in assumptions
    assert any(a.startswith("sft: scaled from 3.20B to 8.00B params") for a in assumptions)
    assert any(a.startswith("eval: scaled from 1.20B") and "host work" not in a for a in assumptions)
    assert timeplan._scaling("eval", rows[2], 8_000_000_000).startswith("eval: scaled from 135M to 8.00B")
    monkeypatch.setattr(timeplan, "throughput_table", lambda: [r for r in rows if r["stage"] != "sft"])
    with pytest.raises(SftnbError, match="no measured sft row"):
        timeplan.estimate(cfg, 8_000_000_000, 1)


# ------------------------------------------------------------------------------------------ 2 ranks, measured
_FSDP_RANKS = _COMMON + r"""
import os
from sftnb.infra import distributed
from sftnb.config import SFTConfig
from sftnb.fsdp import mixed_precision, sharded_from_rank0, train_fsdp
from sftnb.sft import IGNORE, collate, example_ids
rank, size, _ = distributed.init()
pairs = [(f.question, f.answers[0]) for f in facts[: 2 * args["batch"]]]           # two steps: AdamW states exist
encoded = [example_ids(tok, q, a) for q, a in pairs]
batches = [collate(encoded[i:i + args["batch"]], tok.pad_token_id) for i in (0, args["batch"])]
width = max(b["labels"].shape[1] for b in batches)
keep = max(b["labels"].shape[1] - int((b["labels"] != IGNORE).int().argmax(-1).min()) + 1 for b in batches)
cfg = SFTConfig(batch_size=args["batch"], precision="fp32", strategy="fsdp")
policy = mixed_precision("fp32", torch.device("cpu"))
warm = tiny_model(tokenizer=tok)[0]        # the libraries' one-time buffers (gloo, FSDP, kernels) first
train_fsdp(sharded_from_rank0(warm.config, warm.state_dict() if rank == 0 else None, mp_policy=policy), tok,
           pairs[: args["batch"]], cfg, progress=False)
del warm
distributed.barrier()
base = rss("VmRSS:")
reset_peak()
template = LlamaForCausalLM(config)         # every rank keeps the pre-trained model (here in memory)
model = sharded_from_rank0(config, template.state_dict() if rank == 0 else None, mp_policy=policy)
report, state = train_fsdp(model, tok, pairs, cfg, progress=False)
peak = rss("VmHWM:") - base
with open(os.path.join(args["out"], f"rank{rank}.json"), "w") as fh:
    json.dump({"rank": rank, "measured": peak, "width": width, "keep": keep, "config": config.to_dict()}, fh)
distributed.shutdown()
"""


@pytest.mark.slow                      # two torchrun ranks train a 30M-parameter model with FSDP on the CPU
def test_plan_within_25_percent_of_each_ranks_measured_rss_under_torchrun(tmp_path):
    """Issue 23: under ``torchrun --nproc_per_node 2`` (gloo), FSDP SFT as ``Grid._compute_fsdp`` runs it (a
    pre-trained template on every rank, weights broadcast from rank 0, MixedPrecisionPolicy, the trained weights
    gathered on rank 0): each rank's peak RSS increase against the plan's sft stage plus that rank's host share."""
    from sftnb.lm.memory import fsdp_gather_memory, host_memory

    torchrun = Path(sys.executable).parent / "torchrun"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                           "MASTER_PORT")}
    env.update(PYTHONPATH=str(ROOT), MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1",
               TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES="")
    script = tmp_path / "fsdp_ranks.py"
    script.write_text(_FSDP_RANKS)
    args = dict(hidden=512, kv_heads=4, batch=8, out=str(tmp_path))
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", str(script), json.dumps(args)],
                          env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        m = json.loads((tmp_path / f"rank{rank}.json").read_text())
        shape = model_shape(m["config"])
        s = PlanSettings(on_cpu=True, gpus=2, strategy="fsdp", precision="fp32", batch_size=args["batch"],
                         seq_len=m["width"], answer_tokens=m["keep"] - 1,
                         template_shared=False)        # the script builds its template in memory, on each rank
        template = host_memory(shape, s).parts["pre-trained template x2 ranks"] // 2
        sft = sft_memory(shape, s).total
        # rank 0 gathers the trained weights once training has freed gradients and activations (same memory here)
        estimate = template + (max(sft, fsdp_gather_memory(shape, s).total) if rank == 0 else sft)
        error = (estimate - m["measured"]) / m["measured"]
        print(f"rank {rank}: plan {estimate / 2**20:.0f} MiB, measured {m['measured'] / 2**20:.0f} MiB, "
              f"error {error:+.1%}")
        assert abs(error) <= 0.25, rank
