"""Parameter restoration benchmarks: sftnb's engine against the reference approach, side by side in one run.

    python benchmarks/bench_restore.py --model smollm2-135m          # 7-point sweep on a live model pair
    python benchmarks/bench_restore.py --base DIR --tuned DIR        # ... on your own pair
    python benchmarks/bench_restore.py --synthetic-params 50000000   # ... on a synthetic LLaMA-named pair
    python benchmarks/bench_restore.py --cli-synthetic-b 2.0         # `sftnb restore` streaming a >= 2B bf16 pair

Sweep (k = 1, 3, 5, 10, 20, 40, 60 %, region "transformer"):
  naive: the authors' approach, per k: flatten every relative change into one tensor, torch.topk, build the
         restored state dict (torch.where per tensor).
  ours:  ``Restorer``: two radix passes give every threshold of the sweep, then restore + undo in place per k.
Each approach runs in its own subprocess, so its peak RSS (``ru_maxrss``) is its own. With ``--model`` the
"fine-tuned" model is the pre-trained one plus deterministic noise, s = p * (1 + 1e-3 * N(0, 1)) drawn from a
generator seeded 0 (applied in slices, so the fixture itself has no large temporaries): the selection only
needs some change per element. Peak RSS is reported raw and as (peak - RSS after imports) / one model's bytes,
i.e. what the pair and the engine cost on top of torch: for the whole process, and during the sweep alone (the
kernel's peak mark is reset after loading via /proc/self/clear_refs, where Linux allows it).

CLI mode writes a synthetic LLaMA pair (bf16 safetensors shards, tensor by tensor, never whole in RAM;
~4 bytes per parameter on disk for the pair) to a temporary folder and times `sftnb restore --k 20` on it under
``/usr/bin/time -v`` (peak RSS of the CLI process).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KS = (1, 3, 5, 10, 20, 40, 60)


def rss_now(field: str = "VmRSS") -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) so the sweep's own peak can be read afterwards (Linux)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# ============================================================================================= model pairs
def synthetic_model(n_params: int):
    """LLaMA-named fp32 parameters (hidden 512, MLP 1376) with about n_params in the decoder layers."""
    import torch
    h, inter = 512, 1376
    per_layer = 4 * h * h + 3 * h * inter
    layers = max(1, round(n_params / per_layer))
    m = torch.nn.Module()
    g = torch.Generator().manual_seed(1)
    shapes = {"self_attn.q_proj": (h, h), "self_attn.k_proj": (h, h), "self_attn.v_proj": (h, h),
              "self_attn.o_proj": (h, h), "mlp.gate_proj": (inter, h), "mlp.up_proj": (inter, h),
              "mlp.down_proj": (h, inter)}
    params = {}
    for i in range(layers):
        for mod, shape in shapes.items():
            params[f"model.layers.{i}.{mod}.weight"] = torch.randn(shape, generator=g) * 0.02
        params[f"model.layers.{i}.input_layernorm.weight"] = torch.ones(h)

    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self._names = list(params)
            for j, n in enumerate(self._names):
                self.register_parameter(f"p{j}", torch.nn.Parameter(params[n], requires_grad=False))

        def named_parameters(self, *a, **k):
            for n, p in super().named_parameters(*a, **k):
                yield self._names[int(n[1:])], p
    return Flat()


def load_pair(args):
    """(fine-tuned model, pre-trained state dict) in float32."""
    import torch

    from sftnb.lm.models import load_model
    if args.base:
        from sftnb.restoration.checkpoints import Checkpoint
        model, _ = load_model(args.tuned, device="cpu", dtype="float32")
        ck = Checkpoint(args.base)
        base = {n: ck.read(n).float() for n, _ in model.named_parameters()}
        return model, base
    model = synthetic_model(args.synthetic_params) if args.synthetic_params else \
        load_model(args.model, device="cpu", dtype="float32")[0]
    for p in model.parameters():
        p.requires_grad_(False)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():                  # the "fine-tuning": 0.1 % relative noise, in slices so
            flat = p.view(-1)                         # that its temporaries do not count as the engine's peak
            for s in range(0, flat.numel(), 1 << 20):
                piece = flat[s:s + (1 << 20)]
                piece.mul_(torch.randn(piece.shape, generator=g).mul_(1e-3).add_(1))
    return model, base


# ============================================================================================= sweeps
def run_naive(model, base, ks):
    import torch

    from sftnb.restoration.selection import region_names, relative_change
    params = dict(model.named_parameters())
    names = region_names(params, "transformer")
    counts = []
    for k in ks:
        flat = torch.cat([relative_change(params[n].detach(), base[n]).reshape(-1) for n in names])
        count = int(flat.numel() * k // 100)
        idx = torch.topk(flat, count, sorted=False).indices
        mask = torch.zeros(flat.numel(), dtype=torch.bool)
        mask[idx] = True
        restored, off = {}, 0
        for n in names:
            p = params[n].detach()
            restored[n] = torch.where(mask[off:off + p.numel()].view(p.shape), base[n], p)
            off += p.numel()
        counts.append(count)
        del flat, idx, mask, restored
    return counts


def run_ours(model, base, ks):
    from sftnb.restoration.restore import Restorer
    r = Restorer(model, base)
    r.prepare(ks)                                   # every threshold of the sweep: two passes
    counts = []
    for k in ks:
        with r.restored(k) as sel:                  # (an evaluation of the restored model would go here)
            counts.append(sel.count)
    return counts


def child(args) -> None:
    import torch  # noqa: F401  (imports first: the baseline RSS includes torch and transformers)
    import transformers  # noqa: F401

    import sftnb.restoration.restore  # noqa: F401
    rss_imports = rss_now()
    model, base = load_pair(args)
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    rss_loaded = rss_now()
    sweep_peak_known = reset_peak()
    t = time.perf_counter()
    counts = (run_naive if args.child == "naive" else run_ours)(model, base, KS)
    secs = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    sweep_peak = rss_now("VmHWM") if sweep_peak_known else None
    print(json.dumps({"seconds": secs, "peak_rss": peak, "rss_imports": rss_imports, "rss_loaded": rss_loaded,
                      "sweep_peak": sweep_peak, "model_bytes": model_bytes, "counts": counts}))


def sweep(args) -> None:
    argv = [sys.executable, __file__, *sys.argv[1:]]
    res = {}
    for which in ("naive", "ours"):
        p = subprocess.run([*argv, "--child", which], capture_output=True, text=True)
        if p.returncode:
            sys.exit(f"{which} failed:\n{p.stderr[-3000:]}")
        r = res[which] = json.loads(p.stdout.strip().splitlines()[-1])
        mb, base_rss = r["model_bytes"], r["rss_imports"]
        during = (f"; during the sweep {(r['sweep_peak'] - base_rss) / mb:5.2f}x" if r["sweep_peak"] else "")
        print(f"{which:>5}: 7-point sweep {r['seconds']:7.2f} s | peak RSS {r['peak_rss'] / 1e9:5.2f} GB "
              f"= {r['peak_rss'] / mb:5.2f}x one fp32 model ({mb / 1e9:.2f} GB); above imports: process "
              f"{(r['peak_rss'] - base_rss) / mb:5.2f}x{during} (pair alone {(r['rss_loaded'] - base_rss) / mb:.2f}x)")
    assert res["naive"]["counts"] == res["ours"]["counts"], "counts differ"
    n, o = res["naive"], res["ours"]
    print(f"speed-up {n['seconds'] / o['seconds']:.1f}x; peak RSS ours/naive {o['peak_rss'] / n['peak_rss']:.2f}; "
          f"counts per k {o['counts']}")


# ============================================================================================= CLI, >= 2B pair
def write_synthetic_pair(root: Path, billions: float) -> int:
    """A LLaMA pair (bf16 safetensors, 2 GB shards) of about ``billions`` x 1e9 parameters, written tensor by
    tensor with sftnb's streaming ShardWriter. Returns the parameter count."""
    import torch
    from transformers import LlamaConfig

    from sftnb.restoration.checkpoints import ShardWriter
    h, inter, vocab, heads = 2560, 6912, 32000, 20
    per_layer = 4 * h * h + 3 * h * inter + 2 * h
    layers = max(1, math.ceil((billions * 1e9 - 2 * vocab * h) / per_layer))   # at least ``billions``
    shapes = {"model.embed_tokens.weight": (vocab, h), "lm_head.weight": (vocab, h), "model.norm.weight": (h,)}
    for i in range(layers):
        pre = f"model.layers.{i}."
        shapes |= {pre + "input_layernorm.weight": (h,), pre + "post_attention_layernorm.weight": (h,),
                   pre + "self_attn.q_proj.weight": (h, h), pre + "self_attn.k_proj.weight": (h, h),
                   pre + "self_attn.v_proj.weight": (h, h), pre + "self_attn.o_proj.weight": (h, h),
                   pre + "mlp.gate_proj.weight": (inter, h), pre + "mlp.up_proj.weight": (inter, h),
                   pre + "mlp.down_proj.weight": (h, inter)}
    layout = [(n, "BF16", s, 2 * _numel(s)) for n, s in sorted(shapes.items())]
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=h, intermediate_size=inter, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=heads, tie_word_embeddings=False)
    writers = {}
    for which in ("base", "tuned"):
        (root / which).mkdir(parents=True)
        cfg.save_pretrained(root / which)
        writers[which] = ShardWriter(root / which, layout, 2 * 10 ** 9)
    g = torch.Generator().manual_seed(0)
    step = 1 << 24
    for name, _, shape, _ in layout:
        n = _numel(shape)
        for s in range(0, n, step):
            m = min(step, n - s)
            b = (torch.randn(m, generator=g) * 0.02).to(torch.bfloat16)
            t = (b.float() * (1 + 1e-2 * torch.randn(m, generator=g))).to(torch.bfloat16)
            writers["base"].write(name, b)
            writers["tuned"].write(name, t)
    for w in writers.values():
        w.close()
    return sum(_numel(s) for s in shapes.values())


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def cli_synthetic(args) -> None:
    root = Path(tempfile.mkdtemp(prefix="sftnb-bench-restore-", dir=args.tmp))
    try:
        t = time.perf_counter()
        n = write_synthetic_pair(root, args.cli_synthetic_b)
        print(f"synthetic LLaMA pair: {n / 1e9:.2f}B parameters, bf16, {n * 2 / 1e9:.1f} GB per model, "
              f"written in {time.perf_counter() - t:.0f} s")
        cmd = [sys.executable, "-m", "sftnb", "restore", "--base", str(root / "base"), "--tuned",
               str(root / "tuned"), "--k", args.cli_k, "--out", str(root / "out")]
        timed = (["/usr/bin/time", "-v"] if Path("/usr/bin/time").exists() else []) + cmd
        t = time.perf_counter()
        p = subprocess.run(timed, capture_output=True, text=True, env=os.environ | {"TQDM_DISABLE": "1"})
        secs = time.perf_counter() - t
        if p.returncode:
            sys.exit(f"sftnb restore failed:\n{p.stderr[-3000:]}")
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
        for line in p.stderr.splitlines():
            if "Maximum resident set size" in line:
                peak = int(line.split(":")[1]) * 1024
        print(p.stdout.strip())
        print(f"sftnb restore --k {args.cli_k}: {secs:.1f} s wall, peak RSS {peak / 1e9:.2f} GB "
              f"({peak / (n * 2):.2f}x one bf16 model)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--model", help="smollm2-135m, tiny-random or a local folder (noise makes the tuned copy)")
    src.add_argument("--base", help="pre-trained folder (with --tuned)")
    src.add_argument("--synthetic-params", type=int, help="a synthetic LLaMA-named model of about N parameters")
    src.add_argument("--cli-synthetic-b", type=float, help="time `sftnb restore` on a synthetic pair of B billion")
    ap.add_argument("--tuned", help="fine-tuned folder (with --base)")
    ap.add_argument("--cli-k", default="20", help="k for --cli-synthetic-b (e.g. 20 or 1,20)")
    ap.add_argument("--tmp", default=None, help="where --cli-synthetic-b writes its pair (needs ~4 B x 1e9 bytes)")
    ap.add_argument("--child", choices=["naive", "ours"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.base and not args.tuned:
        ap.error("--base needs --tuned")
    if not (args.model or args.base or args.synthetic_params or args.cli_synthetic_b):
        args.model = "smollm2-135m"
    if args.cli_synthetic_b:
        return cli_synthetic(args)
    if args.child:
        return child(args)
    sweep(args)


if __name__ == "__main__":
    main()
