"""Restoration as a GPU run does it, checked against the CPU path: the fine-tuned model on the device and the
pre-trained weights on the host (``Restorer`` in copy mode, each base piece carried to the device when needed)
must give, bit for bit, the weights that the CPU path gives (swap mode, everything in host memory), and undo must
give the fine-tuned weights back. The "fine-tuned" model is the pre-trained one plus seeded noise,
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
    cpu = Restorer(on_cpu, {n: b.clone() for n, b in base.items()})       # swap mode: a private base
    dev = Restorer(on_dev, base, swap=False)        # copy mode, as on a GPU (base on the host; here also on a CPU)
    print(f"{a.model}: {cpu.total:,} parameters in the region; CPU: swap mode {cpu.swap}; {device}: swap mode "
          f"{dev.swap}")

    def first_difference(what):
        ref = dict(on_cpu.named_parameters())
        for n, p in on_dev.named_parameters():
            if not torch.equal(p.detach().cpu(), ref[n].detach()):
                return f"{what}: {n} differs"
        return None

    for k in ks:
        t = time.perf_counter()
        sel_cpu, sel_dev = cpu.restore(k), dev.restore(k)
        took = time.perf_counter() - t
        bad = (f"k = {k}: {sel_dev.count:,} restored on {device}, {sel_cpu.count:,} on the CPU"
               if sel_cpu.count != sel_dev.count else first_difference(f"restored k = {k}"))
        cpu.undo()
        dev.undo()
        bad = bad or first_difference(f"undone k = {k}")
        if bad is None and not all(torch.equal(p.detach().cpu(), tuned[n]) for n, p in on_dev.named_parameters()):
            bad = f"undone k = {k}: not the fine-tuned weights"
        if bad:
            print(f"restore check: FAILED ({bad})")
            return 1
        print(f"k = {k:g} %: {sel_dev.count:,} elements, the same on both; undone ({took:.1f} s for both)")
    print(f"restore check: ok (k = {a.k} %, {device} against the CPU, bit for bit)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
