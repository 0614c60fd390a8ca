"""Throughput by model size on one device: the rows that ``sftnb plan``'s time estimate reads
(``sftnb/resources/throughput.json``, issue 23 item 5).

The time plan needs each stage's rate for the model it plans, not only the embedded 135M model's: a 135M model's
decode step costs about the same whatever its batch (host work), so scaling its rate to 8B by FLOPs reads long.
Throughput depends on a decoder's shape, not on its weight values, so each size here is a randomly initialised
LLaMA of a real model's shape, built directly on the device, and timed in the three stages of the paper's protocol
as sftnb runs them:

* probe: sampling, 10 samples at T = 0.7, exactly 32 new tokens (random weights: nothing stops early, so the row
  counts every token of ``max_new_tokens``), prompts of the probe's lengths (5-23 tokens), ``batch_tokens`` auto,
  the dynamic KV cache (``--static``: the static cache + CUDA graphs, whose compile per model and shape can take
  minutes at 8B; the dynamic rate is expected to be the lower one, so the plan would err long);
* eval: greedy, 16 new tokens, the same engine;
* sft: ``sftnb.sft.train_encoded``, batch 8 of 32-token samples (an 8-token answer), bf16-mixed, AdamW, one device;
  only where ``sftnb.lm.memory.sft_memory`` says one device holds it (a full 8B SFT needs several GPUs, FSDP;
  the plan scales the nearest measured size and says so).

Rows go to ``--out`` (JSON, in throughput.json's form, each naming ``--log``) as each finishes, so a run cut short
by its time limit keeps what it measured. ``--merge ROWS.json`` adds such rows to the package's table (replacing a
row of the same GPU, model and stage). Not a speed target: it has no baseline beside it; it measures::

    python benchmarks/bench_sizes.py --out sizes.json                          # on a GPU: 8B, 3B, 1B
    python benchmarks/bench_sizes.py --sizes tiny,tiny-wide --device cpu --out /tmp/sizes.json   # a dry run
    python benchmarks/bench_sizes.py --merge benchmarks/results/<card>-<date>/throughput_rows.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from sftnb.infra.atomic import atomic_write_json

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "sftnb" / "resources" / "throughput.json"

# config.json fields of the shapes timed (the public configs of these models); "tiny*" are for dry runs on a CPU
SHAPES = {
    "llama-3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=False),
    "llama-3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                         num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=True),
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=512, tie_word_embeddings=True),
    "tiny-wide": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=32, vocab_size=512, tie_word_embeddings=True),
}
STAGES = ("probe", "eval", "sft")


def build(shape: str, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """A randomly initialised LLaMA decoder of ``shape``, allocated on ``device`` in ``dtype`` (no CPU copy)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(**SHAPES[shape], max_position_embeddings=512, pad_token_id=0, bos_token_id=1,
                      eos_token_id=2)
    torch.manual_seed(seed)
    with torch.device(device):
        return AutoModelForCausalLM.from_config(cfg, dtype=dtype).eval()


def prompts_for(count: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """``count`` prompts of random tokens (ids >= 3: no pad/BOS/EOS) with the probe's lengths, 5-23 tokens."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(5, 24, (count,), generator=g).tolist()
    return [torch.randint(3, vocab, (n,), generator=g).tolist() for n in lengths]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_generation(model, prompts, n: int, temperature: float, new: int, static: bool) -> float:
    """Items (generations) per second of ``sftnb.lm.generation.generate`` after a warm-up call; no EOS."""
    from sftnb.lm.generation import generate

    kw = dict(n=n, temperature=temperature, max_new_tokens=new, eos_token_ids=(), batch_tokens="auto",
              progress=False, static=static)
    dev = next(model.parameters()).device
    t = time.perf_counter()
    generate(model, prompts, **kw)          # the same call untimed first: kernels, allocator, compile + graphs
    _sync(dev)
    print(f"  first call (untimed): {time.perf_counter() - t:.1f} s", flush=True)
    t = time.perf_counter()
    out = generate(model, prompts, **kw)
    _sync(dev)
    dt = time.perf_counter() - t
    assert all(len(c) == new for per in out for c in per), "a sample ended before max_new_tokens"
    return len(prompts) * n / dt


def time_sft(model, samples: int, seed: int = 0) -> float:
    """Samples per second of ``sftnb.sft.train_encoded`` (batch 8, bf16-mixed on CUDA, fp32 on a CPU, AdamW) on
    32-token samples with an 8-token answer, after a warm-up of 2 steps."""
    from sftnb.config import SFTConfig
    from sftnb.sft import resolve_precision, train_encoded

    dev = next(model.parameters()).device
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    encoded = []
    for _ in range(samples + 16):
        ids = torch.randint(3, vocab, (32,), generator=g).tolist()
        encoded.append((ids, [-100] * 24 + ids[24:]))
    cfg = SFTConfig(batch_size=8, precision=resolve_precision("auto", dev))
    tok = SimpleNamespace(pad_token_id=0, eos_token_id=2)
    train_encoded(model, tok, encoded[:16], cfg, seed, progress=False)       # warm-up: kernels, optimizer states
    _sync(dev)
    t = time.perf_counter()
    train_encoded(model, tok, encoded[16:], cfg, seed, progress=False)
    _sync(dev)
    return samples / (time.perf_counter() - t)


def sft_fits(shape: str, device: torch.device) -> tuple[bool, str]:
    """Whether one device holds a full SFT of ``shape`` as ``sftnb.lm.memory`` plans it (90 % of its memory)."""
    from sftnb.lm.memory import PlanSettings, model_shape, sft_memory

    if device.type != "cuda":
        return True, "CPU"
    total = torch.cuda.get_device_properties(device).total_memory
    need = sft_memory(model_shape(SHAPES[shape]), PlanSettings(gpu_memory_gb=total / 1e9)).total
    return need <= 0.9 * total, f"plan {need / 1e9:.1f} GB of {total / 1e9:.1f} GB"


SETTINGS = {
    "probe": ("generations/s", 32, "sampling, T=0.7, 10 samples of exactly 32 new tokens (random weights: no early "
                                   "stop), prompts 5-23 tokens, bf16, batch_tokens auto{static}"),
    "eval": ("questions/s", 16, "greedy, exactly 16 new tokens (random weights: no early stop), prompts 5-23 "
                                "tokens, bf16, batch_tokens auto{static}"),
    "sft": ("samples/s", 32, "sftnb.sft.train_encoded, batch 8 of 32-token samples, {precision}, AdamW, one "
                             "device"),
}


def measure(shape: str, stages, device: torch.device, prompts: int, questions: int, samples: int, log: str,
            static_first: bool = False):
    """Yield one throughput row per stage of ``shape`` that this device can run. Decoding is timed on the dynamic
    KV cache unless ``static_first``: compiling an 8B decode step for CUDA graphs can take minutes per shape,
    which the suite's few minutes cannot hold, and the dynamic rate is expected to be the slower one."""
    from sftnb.sft import resolve_precision

    cuda = device.type == "cuda"
    gpu = torch.cuda.get_device_name(device) if cuda else "CPU"
    static = ", static KV cache + CUDA graphs" if cuda else ", static KV cache"
    infer = torch.bfloat16 if cuda else torch.float32
    if {"probe", "eval"} & set(stages):
        t = time.perf_counter()
        model = build(shape, device, infer)
        params = sum(p.numel() for p in model.parameters())
        print(f"{shape}: {params / 1e6:,.1f}M params, built on {device} in {time.perf_counter() - t:.1f} s",
              flush=True)
        vocab = model.config.vocab_size
        for stage in ("probe", "eval"):
            if stage not in stages:
                continue
            work = (prompts_for(prompts, vocab), 10, 0.7, 32) if stage == "probe" else \
                (prompts_for(questions, vocab, seed=1), 1, 0.0, 16)
            how = static if static_first else ", dynamic KV cache"
            try:
                rate = time_generation(model, *work, static=static_first)
            except RuntimeError as e:            # CUDA out of memory or a failed graph capture: say so, go dynamic
                if not static_first:
                    raise
                print(f"{shape}: {stage} with the static cache failed ({str(e).splitlines()[0][:160]}); "
                      f"timing the dynamic path instead", flush=True)
                if cuda:
                    torch.cuda.empty_cache()
                how = ", dynamic KV cache (the static path failed)"
                rate = time_generation(model, *work, static=False)
            unit, tokens, setting = SETTINGS[stage]
            setting = setting.format(static=how).replace("bf16", "bf16" if cuda else "fp32")
            yield dict(gpu=gpu, model=f"{shape} (random weights)", params=params, stage=stage,
                       rate=round(rate, 1), unit=unit, tokens_per_item=tokens, setting=setting, source=log)
        del model
        if cuda:
            torch.cuda.empty_cache()
    if "sft" in stages:
        fits, why = sft_fits(shape, device)
        if not fits:
            print(f"{shape}: sft skipped, one device does not hold it ({why})", flush=True)
            return
        model = build(shape, device, torch.float32)
        params = sum(p.numel() for p in model.parameters())
        try:
            rate = time_sft(model, samples)
        except RuntimeError as e:                # CUDA out of memory beyond the plan: a finding, not a crash
            print(f"{shape}: sft failed ({str(e).splitlines()[0][:160]})", flush=True)
            return
        unit, tokens, setting = SETTINGS["sft"]
        yield dict(gpu=gpu, model=f"{shape} (random weights)", params=params, stage="sft", rate=round(rate, 1),
                   unit=unit, tokens_per_item=tokens, setting=setting.format(precision=resolve_precision(
                       "auto", device)), source=log)
        del model
        if cuda:
            torch.cuda.empty_cache()


def merge(rows_path: Path, table: Path = TABLE) -> int:
    """Add the rows of ``rows_path`` to ``table``, a row of the same (gpu, model, stage) replaced; returns how
    many rows were added or replaced."""
    new = json.loads(rows_path.read_text(encoding="utf-8"))["rows"]
    data = json.loads(table.read_text(encoding="utf-8"))
    key = lambda r: (r["gpu"], r["model"], r["stage"])     # noqa: E731
    keys = {key(r) for r in new}
    data["rows"] = [r for r in data["rows"] if key(r) not in keys] + new
    atomic_write_json(table, data)
    return len(new)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="llama-3-8b,llama-3.2-3b,llama-3.2-1b",
                    help=f"comma-separated, largest first is wisest under a time limit; of {', '.join(SHAPES)}")
    ap.add_argument("--stages", default="probe,eval,sft")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--prompts", type=int, default=512, help="probe prompts (x 10 samples)")
    ap.add_argument("--questions", type=int, default=4096)
    ap.add_argument("--samples", type=int, default=256, help="SFT samples timed (after 16 of warm-up)")
    ap.add_argument("--static", action="store_true",
                    help="time decoding on the static KV cache + CUDA graphs (compiles per model and shape)")
    ap.add_argument("--out", type=Path, default=None, help="rows as JSON, rewritten after each row")
    ap.add_argument("--log", default=None, help="the log the rows name as their source (default: --out's .log)")
    ap.add_argument("--merge", type=Path, default=None, help="add a rows file to sftnb/resources/throughput.json")
    a = ap.parse_args(argv)
    if a.merge is not None:
        try:
            print(f"{merge(a.merge)} row(s) of {a.merge} in {TABLE.relative_to(ROOT)}")
        except (OSError, ValueError, KeyError) as e:
            print(f"bench_sizes: cannot merge {a.merge}: {e}", file=sys.stderr)
            return 1
        return 0
    sizes, stages = a.sizes.split(","), a.stages.split(",")
    bad = [s for s in sizes if s not in SHAPES] + [s for s in stages if s not in STAGES]
    if bad or a.out is None:
        print(f"bench_sizes: {'unknown ' + ', '.join(bad) if bad else '--out is required'} (sizes: "
              f"{', '.join(SHAPES)}; stages: {', '.join(STAGES)})", file=sys.stderr)
        return 2
    from sftnb.lm.models import resolve_device

    device = resolve_device(a.device)
    log = a.log or str(a.out.with_suffix(".log"))
    rows = []
    for shape in sizes:
        for row in measure(shape, stages, device, a.prompts, a.questions, a.samples, log, a.static):
            rows.append(row)
            atomic_write_json(a.out, {"rows": rows})
            print(f"row: {row['stage']:<5} {row['model']:<32} {row['rate']:>10,.1f} {row['unit']}", flush=True)
    print(f"{len(rows)} row(s) in {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
