"""benchmarks/stage_times.py: per-stage minutes of a one-process run from its unit log and its make log."""
import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "stage_times.py"


def _module():
    spec = importlib.util.spec_from_file_location("stage_times", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_stage_minutes_from_the_logs(tmp_path):
    start = 1796562000.0                                  # Sun Dec  6 ... 2026, as `date -u` prints it below
    from datetime import datetime, timezone
    stamp = datetime.fromtimestamp(start, timezone.utc).strftime("%a %b %d %H:%M:%S UTC %Y")
    (tmp_path / "make_reproduce_paper_range.log").write_text(
        f"{stamp}\n...\n\tElapsed (wall clock) time (h:mm:ss or m:ss): 0:10:00\n"
        "\tMaximum resident set size (kbytes): 4000000\n")
    events = [("computed", "inject", 120), ("computed", "probe", 300), ("reused", "probe", 301),
              ("computed", "sft", 420), ("computed", "sft", 540), ("computed", "sft", 900)]   # the last: a rerun
    (tmp_path / "units.log.jsonl").write_text("\n".join(json.dumps({"event": ev, "kind": k, "t": start + t, "pid": i})
                                                        for i, (ev, k, t) in enumerate(events)) + "\n")
    out = _module().stage_times(tmp_path)
    assert "wall 0:10:00, peak RSS 4.1 GB (1 events of later reruns left out)" in out
    assert "| inject | 1 | 2.0 |" in out and "| probe | 1 | 3.0 |" in out and "| sft | 2 | 4.0 |" in out
    assert "| after the last unit (tables, figures, report) | | 1.0 |" in out


def test_a_folder_without_the_logs_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="stage_times: no .*units.log.jsonl"):
        _module().stage_times(tmp_path)
