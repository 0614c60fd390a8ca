"""What building and running the paper-range testbed (params/testbed-paper-range.yaml) costs per unit of work, on
this machine, in float32: the numbers behind the budget in notes/README-22.md.

    python benchmarks/bench_paper_range_costs.py --what probe,sft,eval,restore

Each stage is timed on a small slice with the run's own settings (params/testbed-paper-range.yaml: the probe's
templates, samples, lead-ins; SFT batch 8, fp32; greedy evaluation of 16 tokens), after a warm-up:

* probe: seconds per fact of the likelihood estimator (the calibrated probe's cost per fact) and of the sampling
  estimator (its calibration study: ``calibration_facts`` facts, sampled twice);
* sft: seconds per training sample (one pass, batch 8) on n = 64 and n = 192 samples: the slope and the fixed part;
* eval: seconds per question of greedy evaluation (the SFT unit's evaluation, a restoration's evaluation);
* restore: seconds to restore the top k % of a fine-tuned model (without its evaluation).

Injection is timed by benchmarks/bench_inject.py. Nothing here is a naive baseline: these are costs, not speed-ups.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch

from sftnb.config import load_config
from sftnb.data import load_source, paper_splits
from sftnb.evaluate import answer_questions
from sftnb.mastery import probe
from sftnb.models import load_model
from sftnb.sft import train


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params/testbed-paper-range.yaml")
    ap.add_argument("--what", default="probe,sft,eval,restore")
    ap.add_argument("--probe-facts", type=int, default=96)
    ap.add_argument("--sampling-facts", type=int, default=16)
    ap.add_argument("--questions", type=int, default=256)
    args = ap.parse_args()
    what = set(args.what.split(","))
    cfg = load_config(args.params)
    factset = load_source("builtin", None)
    sets = paper_splits(factset, {}, 0)
    train_facts = [f for f in sets["train"] if f.relation != "country_continent"]
    model, tok = load_model("smollm2-135m", device="cpu", dtype=torch.float32)
    model.eval()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; params {args.params}", flush=True)

    if "probe" in what:
        facts = train_facts[: args.probe_facts]
        probe(model, tok, facts[:8], factset.relations, cfg.probe, "likelihood", cfg.run.batch_tokens, False)
        sec, _ = timed(lambda: probe(model, tok, facts, factset.relations, cfg.probe, "likelihood",
                                     cfg.run.batch_tokens, False))
        print(f"probe likelihood ({cfg.probe.n_templates} templates, {cfg.probe.lead_ins} lead-ins of up to "
              f"{cfg.probe.lead_in_depth} tokens): {len(facts)} facts in {sec:.1f} s = {sec / len(facts):.3f} s/fact",
              flush=True)
        few = train_facts[-args.sampling_facts:]
        sec, _ = timed(lambda: probe(model, tok, few, factset.relations, cfg.probe, "sampling",
                                     cfg.run.batch_tokens, False))
        print(f"probe sampling ({cfg.probe.n_templates} x {cfg.probe.n_samples} samples of <= "
              f"{cfg.probe.max_new_tokens} tokens): {len(few)} facts in {sec:.1f} s = {sec / len(few):.3f} s/fact",
              flush=True)

    tuned = None
    if "sft" in what or "restore" in what:
        pairs = [(f.question, f.answers[0]) for f in train_facts[:192]]
        warm = copy.deepcopy(model)
        train(warm, tok, pairs[:16], cfg.sft, 0, progress=False)
        del warm
        secs = {}
        for n in (64, 192):
            m = copy.deepcopy(model)
            secs[n], _ = timed(lambda: train(m, tok, pairs[:n], cfg.sft, 0, progress=False))
            tuned = m
        slope = (secs[192] - secs[64]) / 128
        print(f"sft (batch {cfg.sft.batch_size}, {cfg.sft.precision}): n=64 {secs[64]:.1f} s, n=192 {secs[192]:.1f} s"
              f" -> {slope:.3f} s/sample ({1 / slope:.1f} samples/s) + {secs[64] - 64 * slope:.1f} s fixed", flush=True)

    if "eval" in what:
        qs = [f.question for f in sets["test"][: args.questions]]
        answer_questions(model, tok, qs[:16], cfg.eval.max_new_tokens, cfg.run.batch_tokens)
        sec, _ = timed(lambda: answer_questions(model, tok, qs, cfg.eval.max_new_tokens, cfg.run.batch_tokens))
        print(f"eval greedy ({cfg.eval.max_new_tokens} tokens): {len(qs)} questions in {sec:.1f} s = "
              f"{sec / len(qs) * 1000:.1f} ms/question", flush=True)

    if "restore" in what and tuned is not None:
        from sftnb.restore import Restorer
        restorer = Restorer(tuned, {n: p.detach() for n, p in model.named_parameters()})
        ks = cfg.restore.k_percents
        sec, _ = timed(lambda: restorer.prepare(ks, "top", seed=0))
        print(f"restore: thresholds of k = {ks} in {sec:.1f} s", flush=True)
        for k in ks:
            def once():
                with restorer.restored(k, "top", seed=0):
                    pass
            sec, _ = timed(once)
            print(f"restore top {k} % and undo: {sec:.1f} s (without its evaluation)", flush=True)


if __name__ == "__main__":
    main()
