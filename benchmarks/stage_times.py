"""Where a one-process run's time went, per stage, from the logs `make reproduce*` keeps beside each other:

    python benchmarks/stage_times.py benchmarks/results/<machine>-<date>-paper-range

reads `units.log.jsonl` (one line per unit computed or reused, with its end time) and the make log (its first line
is the start, `date -u`; `/usr/bin/time -v` adds the wall time and the peak RSS). In a one-process run (its
notebooks are kernels one after another) the units are computed one after another, so a unit took from the
previous event to its own, tables and figures drawn in between included; the first unit (the injection on a
testbed run) starts at the make log's start, which also counts loading the data and the model. Events after the
run's end (reruns from the store) are left out.
"""
from __future__ import annotations

import json
import re
import sys
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path


def _start(make_log: Path) -> float:
    first = make_log.read_text(encoding="utf-8").splitlines()[0].strip()
    return datetime.strptime(first, "%a %b %d %H:%M:%S %Z %Y").replace(tzinfo=timezone.utc).timestamp()


def _time_v(make_log: Path) -> tuple[str, float]:
    text = make_log.read_text(encoding="utf-8")
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    return (wall.group(1) if wall else "?"), (int(rss.group(1)) * 1024 / 1e9 if rss else float("nan"))


def _wall_seconds(wall: str) -> float:
    parts = [float(p) for p in wall.split(":")]
    return sum(p * 60 ** i for i, p in enumerate(reversed(parts)))


def stage_times(folder: Path) -> str:
    units, make_log = folder / "units.log.jsonl", folder / "make_reproduce_paper_range.log"
    if not make_log.is_file():
        make_log = next(iter(sorted(folder.glob("make_reproduce*.log"))), make_log)
    for path in (units, make_log):
        if not path.is_file():
            raise SystemExit(f"stage_times: no {path}")
    events = [json.loads(line) for line in units.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not events:
        raise SystemExit(f"stage_times: {units} is empty")
    # the run's notebooks are kernels one after another (a pid each); events after the make run's end come from
    # later reruns from the store, not from this run
    wall, rss = _time_v(make_log)
    start = _start(make_log)
    end = start + _wall_seconds(wall) if wall != "?" else float("inf")
    later = [e for e in events if e["t"] > end]
    events = [e for e in events if e["t"] <= end]
    prev, per = start, defaultdict(lambda: [0, 0.0])
    for e in events:
        if e["event"] == "computed":
            per[e["kind"]][0] += 1
            per[e["kind"]][1] += e["t"] - prev
        prev = e["t"]
    lines = [f"{folder}: wall {wall}, peak RSS {rss:.1f} GB"
             + (f" ({len(later)} events of later reruns left out)" if later else ""), "", "| stage | units | minutes |", "| --- | --- | --- |"]
    lines += [f"| {kind} | {n} | {s / 60:.1f} |" for kind, (n, s) in per.items()]
    lines.append(f"| after the last unit (tables, figures, report) | | {(end - prev) / 60:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        raise SystemExit("usage: python benchmarks/stage_times.py <results folder with units.log.jsonl and the make log>")
    print(stage_times(Path(sys.argv[1])))
