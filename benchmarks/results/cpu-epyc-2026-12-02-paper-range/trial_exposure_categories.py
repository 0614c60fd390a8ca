"""Issue 22: how exposure maps to mastery category when the testbed is built the paper-range way (a plan with a
fact count per exposure, mostly city_country and us_city_state facts, length-grouped batches), measured on a
plan of --scale times the profile's size: injection, then the calibrated probe of D_train / D_test / D_testood,
then per exposure and relation the category counts (the table the profile's plan is chosen from).

    python benchmarks/results/cpu-epyc-2026-12-02-paper-range/trial_exposure_categories.py --scale 0.25

The store goes to /tmp (nothing under runs/); timings of the injection and the probes are printed too.
"""
import argparse
import time

import pandas as pd

from sftnb.config import load_config
from sftnb.experiment import Experiment
from sftnb import work
from sftnb.inject import injection_plan


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params/testbed-paper-range.yaml")
    ap.add_argument("--scale", type=float, default=0.25)
    ap.add_argument("--store", default="/tmp/sftnb-trial-paper-range")
    args = ap.parse_args()
    base = load_config(args.params)
    (mc,) = [m for m in base.models if m.inject is not None]
    ic, d = mc.inject, base.data
    scaled = lambda v: max(1, round(v * args.scale))     # noqa: E731
    models = [m.model_dump() for m in base.models]
    for m in models:
        if m["inject"] is not None:
            m["inject"]["train_facts_per_exposure"] = [scaled(n) for n in ic.facts_per_exposure("train")]
            m["inject"]["test_facts_per_exposure"] = [scaled(n) for n in ic.facts_per_exposure("test")]
    over = {"models": models, "run": {"out_dir": args.store, "figures_dir": args.store + "-figures", "progress": False},
            "data": {"max_train_per_relation": scaled(d.max_train_per_relation),
                     "max_test_per_relation": scaled(d.max_test_per_relation)}}
    cfg = load_config(args.params, over)
    exp = Experiment(cfg)
    mc = [m for m in cfg.models if m.inject is not None][0]
    print(f"plan: exposures {mc.inject.exposures}, train {mc.inject.train_facts_per_exposure}, "
          f"test {mc.inject.test_facts_per_exposure}; D_train {len(exp.sets['train'])}, D_test {len(exp.sets['test'])}",
          flush=True)
    run = exp.model(mc)
    stages = work.stages(run)
    t0 = time.perf_counter()
    for unit in stages[0]:
        unit()
    t_inject = time.perf_counter() - t0
    res = run.injection.result()
    print(f"injection: {res['statements']} statements in {t_inject:.0f} s ({res['train']['seconds']:.0f} s training, "
          f"{res['statements'] / res['train']['seconds']:.1f} statements/s)", flush=True)
    t0 = time.perf_counter()
    for unit in stages[1].make():          # the probe stage is listed when reached (a Deferred)
        unit()
    probes = run.probes()
    t_probe = time.perf_counter() - t0
    n_facts = sum(len(exp.sets[s]) for s in ("train", "test", "testood"))
    print(f"probes: {n_facts} facts + the calibration study in {t_probe:.0f} s", flush=True)

    exposure = {e.fact.key: e.count for e in injection_plan(exp.sets["train"], exp.sets["test"], mc.inject)}
    t = pd.concat(probes.values(), ignore_index=True)
    t["exposure"] = t["key"].map(exposure).fillna(-1).astype(int)         # -1: outside the plan
    t["group"] = t["relation"].where(t["relation"].isin(["city_country", "us_city_state"]), "other")
    pd.set_option("display.width", 200)
    for by in (["exposure"], ["group", "exposure"]):
        tab = t.groupby(by)["category"].value_counts().unstack(fill_value=0).reindex(columns=range(5), fill_value=0)
        share = tab.div(tab.sum(axis=1), axis=0).round(3)
        print(f"\ncategory counts by {' and '.join(by)} (-1: outside the plan)\n{tab}\nshares\n{share}", flush=True)
    print("\nTable 8 (this trial):", {s: probes[s]["category"].value_counts().reindex(range(5), fill_value=0).tolist()
                                      for s in probes})


if __name__ == "__main__":
    main()
