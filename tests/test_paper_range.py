"""Issue 22: the testbed at the paper's scales. The two profiles validate and their work covers what the issue's
acceptance asks for; the dry profile is the CPU profile scaled down; a testbed built with a fact count per exposure
on a tiny model has the planned facts, and its exposure table reads the base model on a sample only."""
from pathlib import Path

import pytest
import yaml

from sftnb.config import load_config
from sftnb.data.facts import CATEGORIES

ROOT = Path(__file__).resolve().parents[1]
CPU = ROOT / "params" / "testbed-paper-range.yaml"
GPU = ROOT / "params" / "testbed-paper-range-gpu.yaml"
DRY = ROOT / "params" / "testbed-paper-range-dry.yaml"


def _testbed(cfg):
    (mc,) = [m for m in cfg.models if m.inject is not None]
    return mc


@pytest.mark.parametrize("path,largest,min_per_category", [(CPU, 960, 960), (GPU, 1920, 1920)])
def test_profiles_cover_the_acceptance(path, largest, min_per_category):
    cfg = load_config(path)
    mc = _testbed(cfg)
    g = mc.grid or cfg.grid
    assert cfg.grid_models == [mc] or mc in cfg.grid_models
    # Table 2: all five training categories at 240 and at >= 960, with >= 2 seeds
    assert g.categories == list(CATEGORIES) and {60, 240, largest} <= set(g.scales) and len(g.seeds) >= 2
    # Table 4 at 240 and the largest scale (the kept checkpoints are the restored ones), k = 1, 5, 20
    assert {240, largest} <= set(g.keep_checkpoints) and {1, 5, 20} <= set(cfg.restore.k_percents)
    assert {5, 20} <= set(cfg.restore.train_k_percents)                  # Table 6
    assert cfg.restore.models is None or mc.name in cfg.restore.models
    assert cfg.restore.layer_group_size >= 1 and cfg.token_kl.category == 4   # layer groups; KL on D_test-4
    assert cfg.figures_dir(ROOT) == ROOT / "figures" / cfg.run_name
    # the injection plan fits the data caps: enough facts of the injected relations for every planned count
    ic = mc.inject
    assert sum(ic.facts_per_exposure("train")) >= 5 * min_per_category     # five categories of >= the minimum
    assert sum(ic.facts_per_exposure("test")) >= 5 * 60


@pytest.mark.parametrize("path", [CPU, GPU])
def test_profile_injection_plans_are_drawn_from_the_run_sets(path):
    from sftnb.experiment import Experiment
    from sftnb.inject import injection_plan
    cfg = load_config(path, {"run": {"out_dir": "/tmp/sftnb-never-written", "figures_dir": "/tmp/sftnb-nf"}})
    exp = Experiment.__new__(Experiment)                 # the data and the plan only: no store, no model
    exp.cfg = cfg
    mc = _testbed(cfg)
    plan = injection_plan(exp.sets["train"], exp.sets["test"], mc.inject)
    ic = mc.inject
    want = dict(zip(ic.exposures, ic.facts_per_exposure("train")))
    got = {c: sum(1 for e in plan if e.count == c and e.fact.split == "train") for c in ic.exposures}
    assert got == want
    outside = len(exp.sets["train"]) - sum(want.values())
    assert 0 <= outside <= 0.1 * len(exp.sets["train"])          # every probed D_train fact is planned, nearly


def test_gitignore_keeps_the_paper_range_figures():
    text = (ROOT / ".gitignore").read_text()
    assert "!figures/testbed-paper-range/" in text and "!figures/testbed-paper-range-gpu/" in text


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out |= _flat(v, f"{prefix}{k}.")
        elif isinstance(v, list) and v and isinstance(v[0], dict):
            for i, item in enumerate(v):
                out |= _flat(item, f"{prefix}{k}[{i}].")
        else:
            out[prefix + k] = v
    return out


# what the dry profile may change: sizes, and where its outputs go
SIZES = {"run_name", "data.max_train_per_relation", "data.max_test_per_relation", "data.max_testood_per_relation",
         "models[0].calibration_facts", "models[0].inject.train_facts_per_exposure",
         "models[0].inject.test_facts_per_exposure", "models[0].inject.before_facts", "probe.calibration_facts",
         "grid.scales", "grid.seeds", "grid.keep_checkpoints", "token_kl.max_examples", "eval.min_category_facts",
         "restore.k_percents", "restore.train_scales", "restore.train_sample"}


def test_the_dry_profile_is_the_cpu_profile_scaled_down():
    cpu_raw, dry_raw = yaml.safe_load(CPU.read_text()), yaml.safe_load(DRY.read_text())
    # fewer seeds at some scales: the same seeds at the same places in the scale lists (the scales are sizes)
    at = lambda raw: [(raw["grid"]["scales"].index(s), v) for s, v in raw["grid"].pop("scale_seeds", {}).items()]  # noqa: E731
    assert at(cpu_raw) == at(dry_raw)
    cpu, dry = _flat(cpu_raw), _flat(dry_raw)
    assert set(cpu) == set(dry)
    differ = {k for k in cpu if cpu[k] != dry[k]}
    assert differ <= SIZES, differ - SIZES
    load_config(DRY)


def test_restoration_covers_the_restored_seeds_and_table6_its_scales():
    from sftnb import param_analysis as pa
    from sftnb.config import validate

    class Grid:                                            # kept_runs reads only these of a ModelRun
        def __init__(self, cfg):
            self.config = cfg.grid

        def training_facts(self, key):
            return None if key.category == 4 else [object()] * key.scale      # category 4: too few facts

    class Stub:
        name = "m"

        def __init__(self, cfg):
            self.cfg, self.grid = cfg, Grid(cfg)

    grid = {"categories": [0, 4], "scales": [60, 240, 960], "seeds": [0, 1], "keep_checkpoints": [240, 960]}
    every = Stub(validate({"grid": grid}))
    assert {(k.scale, k.seed) for k in pa.kept_runs(every)} == {(240, 0), (240, 1), (960, 0), (960, 1)}
    assert pa.train_restored(every) == pa.kept_runs(every)
    some = Stub(validate({"grid": grid, "restore": {"seeds": [0], "train_scales": [240]}}))
    assert [(k.category, k.scale, k.seed) for k in pa.kept_runs(some)] == [(0, 240, 0), (0, 960, 0)]
    assert [(k.scale, k.seed) for k in pa.train_restored(some)] == [(240, 0)]
    assert len(pa.kept_runs(some, restoring=False)) == 4                   # Tables 3, 9, 10: every seed
    assert [k.seed for k in pa.kept_runs(some, seeds=[1])] == [1, 1]        # Table 11's own seeds win


def test_fewer_seeds_at_a_scale():
    """``grid.scale_seeds``: a scale fine-tuned with some of the seeds only; the grid, the restored models and the
    time plan follow it, and a scale or seed the grid does not have is refused in one line."""
    from sftnb import param_analysis as pa
    from sftnb.config import validate
    from sftnb.infra.errors import SftnbError
    from sftnb.grid import Grid

    grid = {"categories": [0, 1], "scales": [60, 240, 960], "seeds": [0, 1], "keep_checkpoints": [60, 960],
            "scale_seeds": {60: [0]}, "mixed": True, "lora": False}
    cfg = validate({"grid": grid})
    assert cfg.grid.seeds_at(60) == [0] and cfg.grid.seeds_at(240) == [0, 1]
    g = Grid.__new__(Grid)
    g.config = cfg.grid
    keys = g.keys()
    assert sorted({(k.kind, k.scale, k.seed) for k in keys if k.scale == 60}) == [("divided", 60, 0), ("mixed", 60, 0)]
    assert len(keys) == 2 * 1 + 2 * 2 * 2 + 1 + 2 * 2          # divided 60 / 240, 960; mixed 60 / 240, 960

    class Stub:
        name = "m"

        def __init__(self):
            self.cfg, self.grid = cfg, g
    g.training_facts = lambda key: [object()] * key.scale
    assert {(k.scale, k.seed) for k in pa.kept_runs(Stub())} == {(60, 0), (960, 0), (960, 1)}
    for bad, what in (({60: [2]}, "must be some of grid.seeds"), ({120: [0]}, "is not one of the grid's scales"),
                      ({60: []}, "must be some of grid.seeds")):
        with pytest.raises(SftnbError, match=what):
            validate({"grid": {**grid, "scale_seeds": bad}})


def test_the_time_plan_counts_the_seeds_of_each_scale():
    from sftnb.config import load_config as load
    from sftnb.timeplan import estimate
    fewer = load(CPU)
    every = fewer.model_copy(update={"grid": fewer.grid.model_copy(update={"scale_seeds": {}})})
    assert fewer.grid.scale_seeds, "the CPU profile runs fewer seeds at its smallest scale"
    sft = lambda cfg: {st.stage: st for st in estimate(cfg, 135_000_000, 1, 30)[0]}["sft"]    # noqa: E731
    assert sft(fewer).work == sft(every).work - 5 * 60 * len(every.grid.seeds[1:])


@pytest.mark.slow
def test_a_testbed_with_a_fact_count_per_exposure_on_a_tiny_model(tmp_path):
    """The paper-range way of building the testbed, end to end on a tiny model: the planned facts at each count,
    length-grouped batches, Table 8's counts over D_train, and the exposure table read against the base model on
    a sample of ``before_facts`` facts only."""
    import collections

    from sftnb.experiment import Experiment
    from sftnb.inject import injection_plan
    ci = yaml.safe_load((ROOT / "params" / "ci.yaml").read_text())
    testbed = ci["models"][1]
    testbed["inject"] = {**testbed["inject"], "exposures": [0, 2, 8], "train_facts_per_exposure": [6, 4, 2],
                         "test_facts_per_exposure": [2, 2, 1], "length_grouped": True, "before_facts": 12}
    testbed["inject"].pop("train_facts_per_count"), testbed["inject"].pop("test_facts_per_count")
    cfg = load_config(ROOT / "params" / "ci.yaml", {
        "models": [testbed], "grid": {"models": None}, "probe": {"prompt_start_candidates": []},
        "run": {"out_dir": str(tmp_path / "store"), "figures_dir": str(tmp_path / "figures")}})
    exp = Experiment(cfg, root=ROOT)
    (mc,) = cfg.models
    plan = injection_plan(exp.sets["train"], exp.sets["test"], mc.inject)
    counts = collections.Counter((e.fact.split, e.count) for e in plan)
    assert counts == {("train", 0): 6, ("train", 2): 4, ("train", 8): 2, ("test", 0): 2, ("test", 2): 2,
                      ("test", 8): 1}
    res = exp.model(mc).injection.result()
    assert res["statements"] == 2 * 4 + 8 * 2 + 2 * 2 + 8 * 1 and res["facts"] == 17
    assert exp.model(mc).injection.path.name.startswith(mc.name)
    table = exp.model(mc).testbed()
    assert len(table) == 12 and table["R_before"].notna().all()          # the base model on 12 facts only
    assert set(table["key"]) <= {f.key for s in ("train", "test", "testood") for f in exp.sets[s]}
    shown = {e.fact.key: e.count for e in plan}
    assert all(shown.get(k, float("nan")) == x or (k not in shown and x != x)
               for k, x in zip(table["key"], table["exposure"]))
    probed = exp.model(mc).probes()["train"]
    assert len(probed) == len(exp.sets["train"])                          # Table 8 counts every D_train fact
