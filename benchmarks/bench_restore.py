"""A 7-point restoration sweep: sftnb's engine against the reference approach, side by side in one run.

    python benchmarks/bench_restore.py --model smollm2-135m

naive (the authors' tool, per k): flatten every relative change into one tensor, torch.topk, build the restored
state dict. ours: one set of radix passes for all k, then restore / undo in place on the live model.
Each approach runs in its own subprocess so its peak RSS (ru_maxrss) is its own; the "fine-tuned" model is the
pre-trained one plus deterministic noise (1e-3 relative, seed 0), which is all the selection needs.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

KS = (1, 3, 5, 10, 20, 40, 60)


def load_pair(name):
    import torch

    from sftnb.models import load_model
    model, _ = load_model(name, device="cpu", dtype="float32")
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(p * 1e-3 * torch.randn(p.shape, generator=g))
    return model, base


def run_naive(name):
    import torch

    from sftnb.restore import region_names, relative_change
    model, base = load_pair(name)
    names = region_names([n for n, _ in model.named_parameters()], "transformer")
    params = dict(model.named_parameters())
    t = time.perf_counter()
    for k in KS:
        flat = torch.cat([relative_change(params[n].detach(), base[n]).reshape(-1) for n in names])
        count = int(flat.numel() * k // 100)
        idx = torch.topk(flat, count, sorted=False).indices
        mask = torch.zeros(flat.numel(), dtype=torch.bool)
        mask[idx] = True
        restored, off = {}, 0
        for n in names:
            p = params[n].detach()
            m = mask[off:off + p.numel()].view(p.shape)
            restored[n] = torch.where(m, base[n], p)
            off += p.numel()
        del flat, idx, mask, restored
    return time.perf_counter() - t


def run_ours(name):
    from sftnb.restore import Restorer
    model, base = load_pair(name)
    t = time.perf_counter()
    r = Restorer(model, base)
    r.thresholds(KS)
    for k in KS:
        with r.restored(k):
            pass
    return time.perf_counter() - t


def child(which, name):
    import torch
    model_bytes = None
    secs = (run_naive if which == "naive" else run_ours)(name)
    from sftnb.models import load_model
    m, _ = load_model(name, device="cpu", dtype="float32")
    model_bytes = sum(p.numel() * p.element_size() for p in m.parameters())
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": secs, "peak_rss": rss, "model_bytes": model_bytes, "torch": torch.__version__}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--child", choices=["naive", "ours"])
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.model)
    res = {}
    for which in ("naive", "ours"):
        out = subprocess.run([sys.executable, __file__, "--model", a.model, "--child", which],
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        res[which] = json.loads(out)
        r = res[which]
        print(f"{which:>6}: 7-point sweep {r['seconds']:7.2f} s, peak RSS {r['peak_rss'] / 1e9:5.2f} GB "
              f"({r['peak_rss'] / r['model_bytes']:.2f}x the fp32 model, which includes the base copy)")
    print(f"speed-up: {res['naive']['seconds'] / res['ours']['seconds']:.1f}x; "
          f"peak RSS ratio ours/naive: {res['ours']['peak_rss'] / res['naive']['peak_rss']:.2f}")


if __name__ == "__main__":
    main()
