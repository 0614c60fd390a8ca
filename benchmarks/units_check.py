"""Every unit of a params file computed on this machine's device, without the notebooks: the probe, the SFT grid
(full, mixed, LoRA), the evaluations, the token-level and parameter-level analyses, as ``sftnb run`` computes
them before it executes the notebooks (``sftnb.work``), with ``run.device`` set to ``--device``. It needs no
papermill, so it runs where only torch and transformers are installed, and it is the check that the whole
pipeline runs on a GPU (the notebooks only read the units' results). Under torchrun the ranks share the units
as in ``sftnb run``. Prints the units computed per kind and ``units check: ok``::

    python benchmarks/units_check.py params/smoke.yaml --out /tmp/units-cuda            # on the GPU
    torchrun --standalone --nproc_per_node 2 benchmarks/units_check.py params/smoke.yaml --out /tmp/u2
    python benchmarks/units_check.py params/smoke.yaml --device cpu --out /tmp/units     # a dry run
"""
from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("params", type=Path)
    ap.add_argument("--device", default="cuda", help="run.device for the check (default cuda)")
    ap.add_argument("--out", type=Path, required=True, help="the store (a fresh folder computes every unit)")
    ap.add_argument("--dynamic", action="store_true",
                    help="decode on the dynamic KV cache (SFTNB_STATIC_DECODE=0): no compiles, for a quick check")
    a = ap.parse_args(argv)
    if a.dynamic:
        import os
        os.environ["SFTNB_STATIC_DECODE"] = "0"
    from sftnb import work
    from sftnb.config import load_config
    from sftnb.experiment import Experiment
    from sftnb.infra import distributed
    from sftnb.infra.errors import SftnbError

    try:
        cfg = load_config(a.params, {"run": {"device": a.device, "out_dir": str(a.out.resolve()),
                                             "figures_dir": str(a.out.resolve() / "figures"), "progress": False}})
        distributed.check_fsdp_launch(cfg)
    except SftnbError as e:
        print(f"units_check: {e}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    made = []
    if not work.run_units(lambda: made.append(Experiment(cfg, ROOT)) or made[-1]):
        return 0                                        # another rank: its share is done
    exp = made[-1]
    kinds = collections.Counter(u.kind for u in exp.store.computed)
    print(f"device {exp.device}; rank 0 computed {len(exp.store.computed)} unit(s) in "
          f"{time.perf_counter() - t0:.1f} s: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))
    work.finish()
    print(f"units check: ok ({cfg.run_name} on {a.device})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
