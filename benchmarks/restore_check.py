"""Restoration as a GPU run does it, checked against the CPU path: the fine-tuned model on the device and the
pre-trained weights on the host (``Restorer`` in copy mode, each base piece carried to the device when needed)
must give, bit for bit, the weights that the CPU path gives (swap mode, everything in host memory); so must the
pipeline's way on a GPU, a bf16 evaluation copy on the device restored from the fp32 values on the host (the
cast of them, bit for bit); and undo must give the fine-tuned weights back. The "fine-tuned" model is the pre-trained one plus seeded noise,
s = p * (1 + 1e-3 * N(0, 1)). Prints ``restore check: ok`` or the first difference, and exits 1 then::

    python benchmarks/restore_check.py                          # the embedded model on the GPU
    python benchmarks/restore_check.py --model tiny-random --device cpu      # a dry run
"""
from __future__ import annotations

import argparse
import sys
import time

import torch


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--k", default="1,5,20")
    a = ap.parse_args(argv)
    from sftnb.lm.models import copy_model, load_model, resolve_device
    from sftnb.restoration.restore import Restorer

    device = resolve_device(a.device)
    ks = [float(k) for k in a.k.split(",")]
    pre, _ = load_model(a.model, device="cpu", dtype="float32")
    base = {n: p.detach() for n, p in pre.named_parameters()}            # the host template, shared, read-only
    g = torch.Generator().manual_seed(0)
    tuned = {n: p * (1 + 1e-3 * torch.randn(p.shape, generator=g)) for n, p in base.items()}
    on_cpu = copy_model(pre, "cpu", state=tuned)
    on_dev = copy_model(pre, device, state=tuned)
    bf16 = copy_model(pre, device, torch.bfloat16, state=tuned)            # the pipeline's way on a GPU:
    cpu = Restorer(on_cpu, {n: b.clone() for n, b in base.items()})       # swap mode: a private base
    dev = Restorer(on_dev, base, swap=False)        # copy mode, as on a GPU (base on the host; here also on a CPU)
    cast = Restorer(bf16, base, tuned=tuned)        # the evaluation copy restored from fp32 values on the host
    print(f"{a.model}: {cpu.total:,} parameters in the region; CPU: swap mode {cpu.swap}; {device}: swap mode "
          f"{dev.swap}; bf16 copy on {device} restored from the host's fp32 values")

    def first_difference(what, model, dtype=torch.float32):
        ref = dict(on_cpu.named_parameters())
        for n, p in model.named_parameters():
            if not torch.equal(p.detach().cpu(), ref[n].detach().to(dtype)):
                return f"{what}: {n} differs"
        return None

    for k in ks:
        t = time.perf_counter()
        sels = [r.restore(k) for r in (cpu, dev, cast)]
        took = time.perf_counter() - t
        counts = [s.count for s in sels]
        bad = (f"k = {k}: {counts[1]:,} restored on {device}, {counts[2]:,} in the bf16 copy, {counts[0]:,} on "
               f"the CPU" if len(set(counts)) > 1 else
               first_difference(f"restored k = {k}", on_dev) or
               first_difference(f"restored k = {k} (bf16 copy)", bf16, torch.bfloat16))
        for r in (cpu, dev, cast):
            r.undo()
        bad = bad or first_difference(f"undone k = {k}", on_dev) or \
            first_difference(f"undone k = {k} (bf16 copy)", bf16, torch.bfloat16)
        if bad is None and not all(torch.equal(p.detach().cpu(), tuned[n]) for n, p in on_dev.named_parameters()):
            bad = f"undone k = {k}: not the fine-tuned weights"
        if bad:
            print(f"restore check: FAILED ({bad})")
            return 1
        print(f"k = {k:g} %: {counts[0]:,} elements, the same in all three; undone ({took:.1f} s for the three)")
    print(f"restore check: ok (k = {a.k} %, {device} fp32 and bf16 against the CPU, bit for bit)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
