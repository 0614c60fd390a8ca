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


def _mapped_bytes(model, path_part: str) -> tuple[int, int]:
    """(bytes of ``model``'s parameters that lie in a file mapping whose path contains ``path_part``, all bytes)."""
    ranges = []
    for line in open("/proc/self/maps"):
        fields = line.split()
        if len(fields) >= 6 and path_part in fields[5]:
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            ranges.append((lo, hi))
    inside = total = 0
    for p in model.parameters():
        n = p.numel() * p.element_size()
        total += n
        inside += n if any(lo <= p.data_ptr() and p.data_ptr() + n <= hi for lo, hi in ranges) else 0
    return inside, total


def test_the_template_is_memory_mapped_and_a_folder_in_another_dtype_is_converted_once(tmp_path):
    """Issue 23 (weights once per node): the pre-trained template every process keeps is memory-mapped from
    safetensors in the training dtype, so the processes of a node share one copy in the page cache. A folder in
    another dtype (bf16, as LLaMA-3-8B ships) is written once in fp32 as a ``template`` store unit, which every
    later process maps; a folder already in fp32 is mapped as it is, with no unit."""
    from sftnb.lm.models import load_model, save_tiny_model
    fp32 = save_tiny_model(tmp_path / "fp32", seed=3)
    model, tok = load_model(str(fp32), device="cpu", dtype="float32")
    bf16 = tmp_path / "bf16"
    model.to(torch.bfloat16).save_pretrained(bf16)
    tok.save_pretrained(bf16)

    def experiment(folder, tag):
        cfg = smoke_config(tmp_path / tag)
        cfg.models[0].path = str(folder)
        return Experiment(cfg)

    exp = experiment(fp32, "a")
    assert exp.main.template_folder() == str(fp32)
    inside, total = _mapped_bytes(exp.main.template, str(fp32))
    assert inside == total > 0 and not [u for u in exp.store.computed if u.kind == "template"]

    exp = experiment(bf16, "b")
    folder = exp.main.template_folder()
    assert [u.kind for u in exp.store.computed] == ["template"] and folder.startswith(str(tmp_path / "b"))
    template = exp.main.template
    inside, total = _mapped_bytes(template, folder)
    assert inside == total > 0 and {p.dtype for p in template.parameters()} == {torch.float32}
    expect = dict(model.named_parameters())                                   # the bf16 weights, exactly
    assert all(torch.equal(p, expect[n].float()) for n, p in template.named_parameters())
    again = experiment(bf16, "b")                                              # another process: the same unit
    assert again.main.template_folder() == folder and [u.kind for u in again.store.reused] == ["template"]
    assert not again.store.computed


_SHARE = r"""
import json, sys, time
from pathlib import Path
from sftnb.lm.models import load_model
folder, me, other = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
model, _ = load_model(str(folder), device="cpu", dtype="float32")      # as ModelRun.template loads it
total = sum(float(p.sum()) for p in model.parameters())                  # every page of every weight touched
def wait(name):
    for _ in range(600):
        if (folder.parent / name).exists():
            return
        time.sleep(0.05)
    raise SystemExit(f"{name} never came")
(folder.parent / f"{me}.loaded").touch()
wait(f"{other}.loaded")                    # both processes map the file now: read how its pages are shared
rss = pss = 0
block = None
for line in open("/proc/self/smaps"):
    head = line.split()
    if len(head) >= 6 and "-" in head[0] and ":" not in head[0]:
        block = head[5] if head[5].endswith(".safetensors") and str(folder) in head[5] else None
    elif block and head[0] in ("Rss:", "Pss:"):
        rss, pss = (rss + int(head[1]), pss) if head[0] == "Rss:" else (rss, pss + int(head[1]))
print(json.dumps({"rss_kb": rss, "pss_kb": pss}))
(folder.parent / f"{me}.measured").touch()
wait(f"{other}.measured")
"""


def test_two_processes_share_one_copy_of_the_template(tmp_path):
    """Issue 23: two processes (two ranks of a node) that load the same fp32 folder as ``ModelRun.template`` does
    and read every weight each have the whole file resident (Rss), but the node holds it once: their Pss (each
    shared page counted 1/2 in each) add up to about one file, not two."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from sftnb.lm.models import save_tiny_model
    folder = save_tiny_model(tmp_path / "model", seed=1, hidden=512)
    size_kb = sum(f.stat().st_size for f in folder.glob("*.safetensors")) / 1024
    script = tmp_path / "share.py"
    script.write_text(_SHARE)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script), str(folder), a, b], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for a, b in (("p0", "p1"), ("p1", "p0"))]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    m = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert size_kb > 30_000                                                  # ~10M fp32 weights
    for one in m:
        assert one["rss_kb"] >= 0.9 * size_kb                                # each process sees all of it
    # the node holds it once, not twice: their Pss add up to one file, within 25 % (pages of the mapping that
    # loading wrote to are private to each process: ~9 % here)
    assert 0.9 * size_kb <= sum(one["pss_kb"] for one in m) <= 1.25 * size_kb


def test_a_run_evaluating_in_another_dtype_restores_its_evaluation_copy_only(tmp_path, monkeypatch):
    """Issue 23 (never a full fp32 model plus a second copy on one device): where a run evaluates in another
    dtype than it trains in (a GPU run: bf16 beside fp32; here run.inference_dtype bfloat16 on the CPU), the
    restoration sweeps hold one model, the evaluation copy, made from the kept checkpoint, and select from the
    checkpoint's fp32 values: the restored copy is the cast of the restored fp32 model, bit for bit, it is
    evaluated as it is (no further copy), and its answers are those of the old way."""
    import sftnb.evaluate as ev
    from sftnb.param_analysis import _restorer, kept_runs, restorer_on
    cfg = smoke_config(tmp_path)
    cfg.run.inference_dtype = "bfloat16"
    exp = Experiment(cfg)
    run = exp.main
    key = kept_runs(run)[0]
    restorer, target, tok = _restorer(run, key)
    assert {p.dtype for p in target.parameters()} == {torch.bfloat16} and not restorer.swap
    model, _, _ = run.grid.finetune(key)                                 # the old way: the fp32 model itself
    old = restorer_on(run, model, key.label)
    sets = {n: f for n, f in run.eval_sets().items() if n.startswith("test-")}
    with old.restored(20):
        before = ev.copy_model
        expect = run.evaluate(model, tok, sets)                          # a bf16 copy of the restored fp32 model
        with restorer.restored(20):
            ref = dict(model.named_parameters())
            assert all(torch.equal(p.detach(), ref[n].detach().bfloat16()) for n, p in target.named_parameters())
            monkeypatch.setattr(ev, "copy_model", lambda *a, **k: pytest.fail("the target was copied"))
            got = run.evaluate(target, tok, sets)
            monkeypatch.setattr(ev, "copy_model", before)
    assert got == expect


def test_table6_on_a_seeded_sample_of_the_training_set(tmp_path):
    """restore.train_sample: Table 6 scores each restored model on a seeded sample of its training facts where
    it has more (the paper-range profile at n = 960). The sample is fixed by the run (the same facts every
    time, in the set's order), part of the unit's key only where it leaves facts out (a sweep it does not
    shorten keeps its stored unit), and the table's caption says so."""
    from sftnb.param_analysis import kept_runs, restore_sweep
    exp = Experiment(smoke_config(tmp_path))
    run = exp.main
    key = kept_runs(run)[0]
    n = len(run.grid.training_facts(key))
    full = restore_sweep(run, key, [20], on_train=True)
    assert "train_sample" not in full and full["rows"][0]["per_set"]["train"]["n"] == n
    run.cfg.restore.train_sample = n                              # takes every fact: the same unit, reused
    before = len(exp.store.computed)
    assert restore_sweep(run, key, [20], on_train=True) == full and len(exp.store.computed) == before
    run.cfg.restore.train_sample = n - 3
    part = restore_sweep(run, key, [20], on_train=True)
    assert part["train_sample"] == [n - 3, n] and len(exp.store.computed) == before + 1
    assert all(r["per_set"]["train"]["n"] == n - 3 for r in part["rows"])
    again = Experiment(smoke_config(tmp_path))                    # another process: the same facts, the stored unit
    again.main.cfg.restore.train_sample = n - 3
    assert restore_sweep(again.main, key, [20], on_train=True) == part and not again.store.computed
    from sftnb import sections
    from sftnb.report.artifacts import ModelOutput
    out = ModelOutput(tmp_path / "fig6", "M", "M: tiny", first=False)
    (tmp_path / "fig6").mkdir()
    sections.restoration.train_table({(key, "top"): part}, out)
    md = next((tmp_path / "fig6").glob("table06_*.md")).read_text()
    assert f"At n = {key.scale}: a seeded sample of {n - 3} of each model's {n} training facts" in md


def test_a_bf16_copy_is_the_model_a_bf16_load_gives(tmp_path):
    """Evaluation copies (``models.copy_model``), a tiny model loaded in bf16 and pure-bf16 SFT cast the
    parameters only: the rotary frequencies stay float32, as ``from_pretrained(dtype=bfloat16)`` leaves them.
    ``model.to(bfloat16)`` rounded them too, which moves every position, so the copy answered as a different model
    than a bf16 load of the same weights."""
    from transformers import AutoModelForCausalLM

    from sftnb.lm.models import cast_parameters, copy_model, load_model, save_tiny_model
    folder = save_tiny_model(tmp_path / "tiny", seed=2)
    fp32 = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    copy = copy_model(fp32, "cpu", torch.bfloat16).eval()
    assert {n: b.dtype for n, b in copy.named_buffers()} == {n: b.dtype for n, b in loaded.named_buffers()}
    assert all(b.dtype == torch.float32 for _, b in copy.named_buffers())
    assert all(p.dtype == torch.bfloat16 for p in copy.parameters())
    ids = torch.randint(3, 300, (2, 40))
    with torch.inference_mode():
        assert torch.equal(copy(input_ids=ids).logits, loaded(input_ids=ids).logits)
        rounded = copy_model(fp32, "cpu").to(torch.bfloat16)              # the old way: frequencies rounded
        assert not torch.equal(rounded(input_ids=ids).logits, loaded(input_ids=ids).logits)
    tiny, _ = load_model("tiny-random", device="cpu", dtype="bfloat16")
    assert {b.dtype for _, b in tiny.named_buffers()} == {torch.float32}
    assert cast_parameters(fp32, torch.bfloat16) is fp32 and next(fp32.parameters()).dtype == torch.bfloat16
