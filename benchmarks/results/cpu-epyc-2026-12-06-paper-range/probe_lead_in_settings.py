"""Issue 22, for the next paper-range run: can the likelihood probe (37 of the run's 105 min) use fewer lead-ins?
The calibrated estimator's agreement with the paper-range run's stored sampling studies (A, B: 60 facts each) for
several lead-in settings, and the likelihood probe's time per fact. Reads the store of `make reproduce-paper-range`
(runs/testbed-paper-range); recomputes the likelihood on the 60 study facts only.

    python benchmarks/results/cpu-epyc-2026-12-06-paper-range/probe_lead_in_settings.py
"""
import time
import warnings

from sftnb import calibration as C, mastery
from sftnb.config import load_config
from sftnb.experiment import Experiment

warnings.filterwarnings("ignore")
cfg = load_config("params/testbed-paper-range.yaml", {"run": {"progress": False}})
exp = Experiment(cfg)
run = exp.model(cfg.models[0])
facts = run.study_facts()
a, b = run.sampled_study()
model, tok = run.inference_model(), run.tokenizer
print(run.name, len(facts), "study facts; ceiling (A vs B):", round(C.compare(a, b, "")["same category"], 3), flush=True)
for n_lead, depth in ((4, 3), (2, 3), (1, 3), (8, 3)):
    pc = cfg.probe.model_copy(update={"lead_ins": n_lead, "lead_in_depth": depth})
    t = time.time()
    lik = mastery.probe(model, tok, facts, exp.relations, pc, "likelihood", progress=False)
    dt = time.time() - t
    est = C.cross_fitted(lik, a, cfg.probe.n_samples)
    print(f"  lead_ins {n_lead}, depth {depth}: {dt:.0f} s ({dt / len(facts):.2f} s a fact): same category vs A "
          f"{C.compare(est, a, '')['same category']:.3f}, vs B {C.compare(est, b, '')['same category']:.3f}", flush=True)
