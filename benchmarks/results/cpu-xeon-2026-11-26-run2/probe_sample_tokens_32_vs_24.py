import warnings, time; warnings.filterwarnings("ignore")
import pandas as pd
from sftnb.config import load_config
from sftnb.experiment import Experiment
from sftnb import mastery
cfg = load_config("params/embedded.yaml"); ex = Experiment(cfg); ex.progress=False
for mc in cfg.models:
    facts = ex.study_facts(mc)[:60]
    model = ex._inference_model(mc); tok = ex.tokenizer(mc)
    res = {}
    for mnt in (32, 24):
        pc = cfg.probe.model_copy(update={"max_new_tokens": mnt})
        t = time.time(); df = mastery.probe(model, tok, facts, ex.relations, pc, "sampling", progress=False); dt = time.time() - t
        res[mnt] = df
        print(mc.name, mnt, f"{dt:.1f}s", "meanR", round(df.R.mean(), 4), "same cat as 32:", (df.category == res[32].category).mean(), flush=True)
