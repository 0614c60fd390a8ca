"""benchmarks/gpu_suite.sh, the one GPU call (issue 23), in its dry mode on the CPU: every step runs (tiny model,
tiny sizes) and the table has a result row for each; the plan-vs-peak check passes on the CPU too."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow                      # ~100 s: eight benchmark processes on tiny models
def test_gpu_suite_dry_run_on_the_cpu(tmp_path):
    env = dict(os.environ, DRY="1", OUT=str(tmp_path / "suite"), PY=sys.executable, PYTHONPATH=str(ROOT),
               CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh")], env=env, capture_output=True,
                          text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 8 and not any("FAILED" in r or "SKIPPED" in r for r in rows), proc.stdout
    assert "plan check: ok" in rows[0]
    assert [("stop rule on" in r, "static" in r) for r in rows[1:5]] == [(True, False), (True, True)] * 2
    assert all("x" in r.split("|")[2] for r in rows[1:5])                     # every comparison printed its ratio
    assert "restoration" in rows[5] and "restore check: ok" in rows[5]       # copy mode = swap mode, bit for bit
    assert "params/smoke.yaml on cpu" in rows[6] and "units check: ok" in rows[6]   # the pipeline's units
    assert "throughput by model size" in rows[7] and "| 6 row(s)" in rows[7]  # 2 tiny shapes x 3 stages
    sizes = json.loads((tmp_path / "suite" / "throughput_rows.json").read_text())["rows"]
    assert [(r["model"].split()[0], r["stage"]) for r in sizes] == [
        (m, st) for m in ("tiny", "tiny-wide") for st in ("probe", "eval", "sft")]


def _bench_sizes():
    import importlib.util
    spec = importlib.util.spec_from_file_location("bench_sizes", ROOT / "benchmarks" / "bench_sizes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_sizes_rows_feed_the_time_plan(tmp_path, monkeypatch, capsys):
    """benchmarks/bench_sizes.py on the CPU (tiny shapes): one row per stage in throughput.json's form, each
    naming its log; --merge adds them to a copy of the table, replacing a row of the same (gpu, model, stage), and
    leaves the rows file as it was; the time plan then reads them. Bad sizes or stages: one line, exit 2."""
    import shutil

    from sftnb import timeplan
    bench = _bench_sizes()
    out = tmp_path / "rows.json"
    assert bench.main(["--sizes", "tiny", "--device", "cpu", "--prompts", "8", "--questions", "16",
                       "--samples", "16", "--out", str(out), "--log", "suite/sizes.log"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["stage"] for r in rows] == ["probe", "eval", "sft"]
    template = timeplan.throughput_table()[0]
    for r in rows:
        assert r.keys() == template.keys() and r["rate"] > 0 and r["source"] == "suite/sizes.log"
        assert r["params"] == sum(p.numel() for p in bench.build("tiny", "cpu", torch.float32).parameters())
    table = tmp_path / "throughput.json"
    shutil.copy(ROOT / "sftnb" / "resources" / "throughput.json", table)
    before = json.loads(table.read_text())["rows"]
    rows_text = out.read_text()
    assert bench.merge(out, table) == 3 and bench.merge(out, table) == 3          # the second replaces the first
    merged = json.loads(table.read_text())["rows"]
    assert merged == before + rows and out.read_text() == rows_text
    monkeypatch.setattr(timeplan, "throughput_table", lambda: merged)
    assert timeplan._row("probe", rows[0]["params"]) == rows[0]
    capsys.readouterr()
    for argv in (["--sizes", "llama-70b", "--out", str(out)], ["--stages", "train", "--out", str(out)],
                 ["--sizes", "tiny"]):
        assert bench.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("bench_sizes: ") and len(err.strip().splitlines()) == 1
