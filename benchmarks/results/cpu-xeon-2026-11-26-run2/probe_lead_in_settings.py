"""The calibrated estimator's agreement with the stored sampling runs of the main run's study facts, for several
lead-in settings (likelihood recomputed on the study facts only; the sampling runs are the store's)."""
import warnings, time; warnings.filterwarnings("ignore")
from sftnb.config import load_config
from sftnb.experiment import Experiment
from sftnb import calibration as C, mastery
cfg = load_config("params/embedded.yaml"); ex = Experiment(cfg); ex.progress = False
for mc, settings in ((cfg.models[0], [(4, 3), (8, 3), (8, 1)]), (cfg.models[1], [(4, 3), (8, 3), (8, 1)])):
    facts = ex.study_facts(mc); a, b = ex.sampled_study(mc)
    model = ex._inference_model(mc); tok = ex.tokenizer(mc)
    print(mc.name, len(facts), "study facts; ceiling (A vs B):", round(C.compare(a, b, "")["same category"], 3), flush=True)
    for nl, d in settings:
        pc = cfg.probe.model_copy(update={"lead_ins": nl, "lead_in_depth": d})
        t = time.time(); lik = mastery.probe(model, tok, facts, ex.relations, pc, "likelihood", progress=False)
        est = C.cross_fitted(lik, a, cfg.probe.n_samples)
        print(f"  lead_ins {nl}, depth {d} ({time.time() - t:.0f} s): same category vs A",
              round(C.compare(est, a, "")["same category"], 3), "vs B", round(C.compare(est, b, "")["same category"], 3), flush=True)
