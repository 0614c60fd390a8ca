"""benchmarks/gpu_suite.sh, the one GPU call (issue 23), in its dry mode on the CPU: every step runs (tiny model,
tiny sizes) and the table has a result row for each; the plan-vs-peak check passes on the CPU too."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow                      # ~2 minutes: five benchmark processes on a tiny model
def test_gpu_suite_dry_run_on_the_cpu(tmp_path):
    env = dict(os.environ, DRY="1", OUT=str(tmp_path / "suite"), PY=sys.executable, PYTHONPATH=str(ROOT),
               CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh")], env=env, capture_output=True,
                          text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == 5 and not any("FAILED" in r for r in rows), proc.stdout
    assert "plan check: ok" in rows[0]
    assert [("stop rule on" in r, "static" in r) for r in rows[1:]] == [(True, False), (True, True)] * 2
    assert all("x" in r.split("|")[2] for r in rows[1:])                      # every comparison printed its ratio
