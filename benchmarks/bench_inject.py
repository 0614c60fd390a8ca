"""Knowledge injection (the testbed, ``sftnb.inject``): statements/s of the schedule-order batches (the main run's
testbed) against length-grouped batches (``inject.length_grouped``), side by side on the same statements.

    python benchmarks/bench_inject.py --model smollm2-135m --facts 160 --exposures 0,1,2,4

The statements are those of a real injection plan (built-in D_train facts of the testbed's four relations, the
plan's exposure counts, the package's statement templates), so their token lengths are the run's. Each path trains
a fresh copy of the model for one pass (AdamW, the testbed's learning rate), after a warm-up of a few batches; the
padding share is the fraction of batch cells that hold no statement token. ``--batch-sizes 16,32`` also times a
larger batch (fewer optimizer steps; another injection, so another testbed: it is shown, not chosen here).
"""
from __future__ import annotations

import argparse
import copy
import os
import time

import torch

from sftnb.config import InjectConfig, SFTConfig
from sftnb.data.sources import load_source, paper_splits
from sftnb.inject import (assign_exposures, default_templates, encode_statement, exposure_schedule, inject_model,
                          length_grouped_order, padding_fraction, train_config)
from sftnb.lm.models import load_model

RELATIONS = ("city_country", "country_capital", "us_city_state", "us_state_capital")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--facts", type=int, default=160, help="facts in the plan (spread over the exposure counts)")
    ap.add_argument("--exposures", default="0,1,2,4")
    ap.add_argument("--batch-sizes", default="16", help="comma-separated; each timed both ways")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    exposures = [int(x) for x in args.exposures.split(",")]

    factset = load_source("builtin", None)
    train_facts = [f for f in paper_splits(factset, {}, 0)["train"] if f.relation in RELATIONS]
    plan = assign_exposures(train_facts, exposures, args.facts // len(exposures), args.seed)
    statements = exposure_schedule(plan, {r: list(t) for r, t in default_templates().items()}, args.seed)
    base, tok = load_model(args.model, device="cpu", dtype=torch.float32)
    lengths = [len(encode_statement(tok, s)[0]) for s in statements]
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (other processes slow every path alike)")
    print(f"{len(plan)} facts at exposures {exposures}: {len(statements)} statements, "
          f"{sum(lengths) / len(lengths):.1f} tokens on average (min {min(lengths)}, max {max(lengths)}); "
          f"{torch.get_num_threads()} threads")

    rows = []
    for bs in [int(x) for x in args.batch_sizes.split(",")]:
        cfg = train_config(SFTConfig(precision="fp32"), InjectConfig(learning_rate=args.lr, batch_size=bs))
        warm = copy.deepcopy(base)
        inject_model(warm, tok, statements[: 3 * bs], cfg, args.seed, progress=False)   # allocator, kernels
        del warm
        for grouped in (False, True):
            order = length_grouped_order(lengths, bs, args.seed) if grouped else list(range(len(lengths)))
            model = copy.deepcopy(base)
            t0, c0 = time.perf_counter(), time.process_time()
            report = inject_model(model, tok, statements, cfg, args.seed, progress=False, length_grouped=grouped)
            sec, cpu = time.perf_counter() - t0, time.process_time() - c0
            rows.append((bs, "length-grouped" if grouped else "schedule order (naive)", sec,
                         len(statements) / sec, padding_fraction(lengths, order, bs), report.losses[-1], cpu))
            print(f"  batch {bs}, {rows[-1][1]}: {sec:.1f} s wall, {cpu:.1f} s CPU", flush=True)
            del model
    naive = {bs: sec for bs, what, sec, *_ in rows if what.startswith("schedule")}
    print(f"{'batch':>5}  {'batches':<24} {'seconds':>8} {'statements/s':>13} {'padding':>8} {'last loss':>10} "
          f"{'speed-up':>9}")
    for bs, what, sec, rate, pad, loss, _ in rows:
        print(f"{bs:>5}  {what:<24} {sec:8.1f} {rate:13.2f} {pad:8.1%} {loss:10.3f} {naive[rows[0][0]] / sec:8.2f}x")
    best = min(r[2] for r in rows)
    print(f"per statement: {best / len(statements) * 1000:.0f} ms at best; speed-ups are against schedule order at "
          f"batch {rows[0][0]}")


if __name__ == "__main__":
    main()
