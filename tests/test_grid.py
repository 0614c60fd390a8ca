"""The SFT grid through the store: an interrupted grid resumes without recomputing finished units."""
import pytest
import torch

import sftnb.grid as grid_module
from sftnb.config import load_config
from sftnb.experiment import Experiment


def smoke_config(tmp_path):
    return load_config("params/smoke.yaml", {
        "run": {"out_dir": str(tmp_path / "run"), "figures_dir": str(tmp_path / "fig"), "progress": False},
        "grid": {"lora": False}})


def test_interrupted_grid_resumes(tmp_path, monkeypatch):
    real_train = grid_module.train
    calls = []

    def dies_on_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated kill mid-grid")
        return real_train(*a, **k)

    monkeypatch.setattr(grid_module, "train", dies_on_third)
    exp = Experiment(smoke_config(tmp_path))
    with pytest.raises(KeyboardInterrupt):
        exp.main.grid.table()
    finished = len([u for u in exp.store.computed if u.kind == "sft"])
    assert finished == 2

    monkeypatch.setattr(grid_module, "train", real_train)
    again = Experiment(smoke_config(tmp_path))
    table = again.main.grid.table()
    sft_computed = [u for u in again.store.computed if u.kind == "sft"]
    sft_reused = [u for u in again.store.reused if u.kind == "sft"]
    done = int((table["status"] == "done").sum())
    assert len(sft_computed) == done - 2 and len(sft_reused) >= 2
    assert not any(u.kind == "probe" for u in again.store.computed)       # the probe was finished: reused

    third = Experiment(smoke_config(tmp_path))
    assert third.main.grid.table().equals(table) and not [u for u in third.store.computed if u.kind == "sft"]


def test_parameter_analyses_use_the_finetuned_weights(tmp_path):
    """Notebooks 04-06 restore a *fine-tuned* model: restoring k = 100 % gives back exactly the pre-trained weights
    of the region (and undo the fine-tuned ones), the statistics see real changes, and a sweep stores per-fact
    correctness for every k."""
    import math

    from sftnb.param_analysis import kept_runs, restore_sweep, restorer_on, sweep_frame, update_statistics
    from sftnb.restoration.selection import in_region
    exp = Experiment(smoke_config(tmp_path))
    runs = kept_runs(exp.main)
    assert runs
    stats = update_statistics(exp.main, runs[0])
    shares = stats["concentration"]["share"]
    assert all(0 < s <= 1 and not math.isnan(s) for s in shares) and shares == sorted(shares)
    model, _, _ = exp.main.grid.finetune(runs[0])
    base = exp.main.pretrained_state()
    tuned = {n: p.detach().clone() for n, p in model.named_parameters()}
    moved = [n for n in tuned if in_region(n, "transformer") and not torch.equal(tuned[n], base[n])]
    assert moved                                                   # SFT changed the region
    restorer = restorer_on(exp.main, model)
    with restorer.restored(100):
        for n, p in model.named_parameters():
            want = base[n] if in_region(n, "transformer") else tuned[n]
            assert torch.equal(p.detach(), want), n
    assert all(torch.equal(p.detach(), tuned[n]) for n, p in model.named_parameters())      # undo is exact
    sweep = restore_sweep(exp.main, runs[0], [100])
    frame = sweep_frame(exp.main, sweep)
    assert list(frame["k"]) == [0, 100]
    for row in sweep["rows"]:
        assert all(len(r["correct"]) == r["n"] for r in row["per_set"].values())


def test_kept_checkpoint_is_a_folder_sftnb_restore_takes(tmp_path):
    """A kept grid checkpoint is a whole Hugging Face folder: from_pretrained loads the fine-tuned weights, and
    `sftnb restore --tuned` on it with k = 100 % gives the pre-trained region back."""
    from safetensors.torch import load_file

    from sftnb.cli import main
    from sftnb.lm.models import load_model, save_tiny_model
    from sftnb.param_analysis import kept_runs
    from sftnb.restoration.selection import in_region
    exp = Experiment(smoke_config(tmp_path))
    key = kept_runs(exp.main)[0]
    exp.main.grid.unit(key)
    folder = exp.main.grid.checkpoint_dir(key)
    assert folder is not None and (folder / "tokenizer_config.json").is_file()
    tuned, _ = load_model(str(folder), device="cpu", dtype="float32")
    live, _, _ = exp.main.grid.finetune(key)
    live_sd = dict(live.named_parameters())
    assert all(torch.equal(p, live_sd[n]) for n, p in tuned.named_parameters())
    base_dir = save_tiny_model(tmp_path / "base", seed=0)            # the smoke model's pre-trained weights
    out = tmp_path / "restored"
    assert main(["restore", "--base", str(base_dir), "--tuned", str(folder), "--k", "100", "--out", str(out)]) == 0
    restored, pre = load_file(str(out / "model.safetensors")), load_file(str(base_dir / "model.safetensors"))
    moved = 0
    for n, t in restored.items():
        want = pre[n] if in_region(n, "transformer") else live_sd[n].detach()
        assert torch.equal(t, want), n
        moved += in_region(n, "transformer") and not torch.equal(live_sd[n].detach(), pre[n])
    assert moved > 0


def test_notebook_config_accepts_papermill_strings():
    from sftnb.config import notebook_config
    cfg = notebook_config({"params_file": "params/smoke.yaml", "grid": '{"seeds": [0, 1]}', "run": {"progress": False}})
    assert cfg.grid.seeds == [0, 1] and cfg.run.progress is False and cfg.grid.scales == [4, 8]


def test_probe_agreement_compares_the_estimator_with_sampling(tmp_path):
    cfg = load_config("params/smoke.yaml", {
        "run": {"out_dir": str(tmp_path / "run"), "figures_dir": str(tmp_path / "fig"), "progress": False},
        "probe": {"method": "calibrated", "calibration_facts": 12}})
    exp = Experiment(cfg)
    agr = exp.main.probe_agreement()
    summary = agr["summary"]
    assert list(summary["facts"]) == [12, 12, 12, 12] and summary["comparison"].iloc[0].endswith("the ceiling")
    assert int(agr["confusion_estimator"].to_numpy().sum()) == 12
    assert set(agr["check"]) >= {"agreement within 5 points", "mean R within 0.02"}
    probes = exp.main.probes()
    assert set(probes["train"]["category"]) <= {0, 1, 2, 3, 4} and probes["train"]["R"].between(0, 1).all()
    assert Experiment(smoke_config(tmp_path)).main.probe_agreement() is None       # sampling: nothing to compare
