"""Results store (issue 2, item 10): keyed units, atomic writes, resume after a crash or a kill -9."""
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sftnb.infra.atomic import atomic_write_json, atomic_write_text
from sftnb.infra.store import Store, canonical_json, spec_hash

SPEC = {"model": "tiny-random", "scale": 60, "seed": 0, "lr": 1e-5}


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def _spawn(script: str, *args) -> subprocess.Popen:
    """A python process running ``script``; it prints READY when it is in the middle of its write."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _kill_when_ready(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline().strip()
    if line != "READY":
        proc.kill()
        pytest.fail(f"child did not reach its write: {line!r} {proc.stderr.read()}")
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL


# ------------------------------------------------------------------------------------------ keys
def test_same_spec_same_key_different_spec_different_key():
    assert spec_hash("sft", SPEC) == spec_hash("sft", dict(reversed(list(SPEC.items()))))   # order-free
    assert spec_hash("sft", {"a": {"x": 1, "y": [1, 2]}}) == spec_hash("sft", {"a": {"y": [1, 2], "x": 1}})
    keys = {spec_hash("sft", SPEC), spec_hash("probe", SPEC), spec_hash("sft", {**SPEC, "seed": 1}),
            spec_hash("sft", {**SPEC, "lr": 2e-5}), spec_hash("sft", {**SPEC, "extra": None}),
            spec_hash("sft", {"a": [1, 2]}), spec_hash("sft", {"a": [2, 1]})}
    assert len(keys) == 7
    assert len(spec_hash("sft", SPEC)) == 64
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'


def test_unit_path_is_keyed_and_labelled(tmp_path):
    store = Store(tmp_path)
    u = store.unit("sft", SPEC, label="cat 4/scale 60")
    assert u.key == spec_hash("sft", SPEC)
    assert u.path == tmp_path / "sft" / f"cat_4_scale_60-{u.key[:16]}"
    assert store.unit("sft", SPEC).path == tmp_path / "sft" / u.key[:16]
    assert store.unit("sft", {**SPEC, "seed": 1}, label="cat 4/scale 60").path != u.path


# ------------------------------------------------------------------------------------------ reuse
def test_a_unit_is_computed_once_then_reused(tmp_path):
    calls = []

    def fn(tmp: Path) -> dict:
        calls.append(tmp)
        assert tmp.is_dir() and tmp.name.startswith(".")          # written in a hidden temporary folder
        (tmp / "records.jsonl").write_text('{"fact": 1}\n')
        return {"accuracy": 0.5}

    store = Store(tmp_path)
    first = store.compute("eval", SPEC, fn, label="run")
    assert first["accuracy"] == 0.5 and "_seconds" in first
    assert len(calls) == 1 and len(store.computed) == 1 and not store.reused
    unit = store.unit("eval", SPEC, label="run")
    assert unit.done and unit.result() == first
    assert json.loads(unit.file("spec.json").read_text()) == {"kind": "eval", "spec": SPEC}
    assert unit.file("records.jsonl").read_text() == '{"fact": 1}\n'
    assert _entries(tmp_path / "eval") == [unit.path.name]       # nothing else left behind

    for again in (store, Store(tmp_path)):                       # same process, and a new run
        assert again.compute("eval", dict(SPEC), fn, label="run") == first
    assert len(calls) == 1                                       # fn never called again
    log = [json.loads(x) for x in (tmp_path / "units.log.jsonl").read_text().splitlines()]
    assert [e["event"] for e in log] == ["computed", "reused", "reused"]
    import os
    import socket
    assert {(e["rank"], e["host"], e["pid"]) for e in log} == {(0, socket.gethostname(), os.getpid())}

    store.compute("eval", {**SPEC, "seed": 1}, fn, label="run")  # another spec is another unit
    assert len(calls) == 2
    assert [u["spec"]["seed"] for u in Store(tmp_path).units("eval")] in ([0, 1], [1, 0])


def test_summary_and_units_list_only_finished_units(tmp_path):
    store = Store(tmp_path)
    store.compute("probe", {"i": 0}, lambda tmp: {"v": 0})
    with pytest.raises(ZeroDivisionError):
        store.compute("probe", {"i": 1}, lambda tmp: {"v": 1 / 0})
    store.compute("probe", {"i": 0}, lambda tmp: {"v": -1})
    assert store.summary() == f"1 unit(s) computed, 1 reused from {tmp_path}"
    units = store.units("probe")
    assert [(u["spec"], u["result"]["v"]) for u in units] == [({"i": 0}, 0)]
    assert store.units("nothing") == []


# ------------------------------------------------------------------------------------------ interruption
def test_exception_inside_fn_leaves_no_result_and_is_recomputed(tmp_path):
    store = Store(tmp_path)

    def boom(tmp: Path) -> dict:
        (tmp / "weights.bin").write_bytes(b"w" * 10_000)
        (tmp / "result.json").write_text('{"half":')             # even a partial result.json
        raise KeyboardInterrupt                                  # Ctrl-C is an interruption too

    with pytest.raises(KeyboardInterrupt):
        store.compute("sft", SPEC, boom)
    unit = store.unit("sft", SPEC)
    assert not unit.done and not unit.path.exists()
    assert _entries(tmp_path / "sft") == []                      # the temporary folder went too
    calls = []
    result = Store(tmp_path).compute("sft", SPEC, lambda tmp: calls.append(1) or {"ok": True})
    assert calls == [1] and result["ok"] is True and unit.done


def test_writing_without_a_result_publishes_nothing(tmp_path):
    unit = Store(tmp_path).unit("restore", {"k": 20})
    with pytest.raises(RuntimeError, match="wrote no result.json"):
        with unit.writing() as tmp:
            (tmp / "partial.bin").write_bytes(b"x")
    assert not unit.path.exists() and _entries(tmp_path / "restore") == []


def test_a_concurrent_writer_that_finished_first_wins(tmp_path):
    store = Store(tmp_path)

    def slow(tmp: Path) -> dict:                                 # meanwhile another writer publishes it
        Store(tmp_path).compute("sft", SPEC, lambda t: {"who": "other"})
        return {"who": "me"}

    store.compute("sft", SPEC, slow)
    unit = store.unit("sft", SPEC)
    assert unit.result()["who"] == "other"
    assert _entries(tmp_path / "sft") == [unit.path.name]


KILL_MID_UNIT = """
    import sys, time
    from sftnb.infra.store import Store
    store = Store(sys.argv[1])
    store.compute("sft", {"i": 0}, lambda tmp: {"i": 0})           # a unit that finishes
    def slow(tmp):
        (tmp / "weights.bin").write_bytes(b"w" * 100_000)          # half of the unit is on disk
        with open(tmp / "result.json", "w") as fh:                  # and a partial result.json
            fh.write('{"i": ')
            fh.flush()
            print("READY", flush=True)
            time.sleep(120)
        return {"i": 1}
    store.compute("sft", {"i": 1}, slow)
"""


def test_kill_minus_9_mid_unit_leaves_no_result_and_resumes(tmp_path):
    proc = _spawn(KILL_MID_UNIT, tmp_path)
    _kill_when_ready(proc)

    store_dir = tmp_path / "sft"
    leftovers = [n for n in _entries(store_dir) if n.startswith(".") and not n.endswith(".claim")]
    assert len(leftovers) == 1 and f".tmp-{proc.pid}-" in leftovers[0]     # the dead writer's temp folder
    claimed = [n for n in _entries(store_dir) if n.endswith(".claim")]     # and its claim (sftnb.infra.locks)
    assert claimed == [f".{spec_hash('sft', {'i': 1})[:16]}.claim"]
    assert json.loads((store_dir / claimed[0]).read_text())["pid"] == proc.pid
    # before the next run cleans up: the killed unit has no (half-written) result, the finished one has
    assert not (store_dir / spec_hash("sft", {"i": 1})[:16]).exists()
    assert (store_dir / spec_hash("sft", {"i": 0})[:16] / "result.json").is_file()

    store = Store(tmp_path)                                        # the next run deletes the leftovers ...
    assert not any(n.startswith(".") for n in _entries(store_dir))
    calls = []
    assert store.compute("sft", {"i": 0}, lambda tmp: calls.append(0) or {"i": 0})["i"] == 0
    assert store.compute("sft", {"i": 1}, lambda tmp: calls.append(1) or {"i": 1})["i"] == 1
    assert calls == [1]                                            # ... reuses the finished unit, redoes the other
    assert json.loads(store.unit("sft", {"i": 1}).file("result.json").read_text())["i"] == 1


# ------------------------------------------------------------------------------------------ clean_stale
def test_clean_stale_removes_only_dead_writers_temp_folders(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = int(dead.stdout)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        kind = tmp_path / "probe"
        (kind / f".unit-aaaa.tmp-{dead_pid}-0123abcd").mkdir(parents=True)
        (kind / f".unit-aaaa.tmp-{dead_pid}-0123abcd" / "half.bin").write_bytes(b"x")
        (kind / f".unit-bbbb.tmp-{alive.pid}-0123abcd").mkdir()
        (kind / f".unit-cccc.tmp-{os.getpid()}-0123abcd").mkdir()   # this process starts afresh: stale
        (kind / ".unit-dddd.tmp-notapid").mkdir()                      # not ours: untouched
        (kind / "unit-eeee").mkdir()                                    # a finished unit: untouched
        store = Store(tmp_path)                                          # the constructor cleans ...
        assert _entries(kind) == sorted([f".unit-bbbb.tmp-{alive.pid}-0123abcd", ".unit-dddd.tmp-notapid",
                                         "unit-eeee"])
        assert store.clean_stale() == 0                                 # ... and a second pass finds nothing
        alive.kill()
        alive.wait()
        assert store.clean_stale() == 1
        assert _entries(kind) == [".unit-dddd.tmp-notapid", "unit-eeee"]
    finally:
        alive.kill()
        alive.wait()


# ------------------------------------------------------------------------------------------ atomic writes
def test_atomic_write_json_replaces_whole_file(tmp_path):
    p = tmp_path / "deep" / "er" / "r.json"
    atomic_write_json(p, {"v": 1, "path": Path("/x")})
    assert json.loads(p.read_text()) == {"v": 1, "path": "/x"}
    atomic_write_json(p, {"v": 2})
    assert json.loads(p.read_text()) == {"v": 2}
    assert _entries(p.parent) == ["r.json"]


def test_atomic_write_json_failing_mid_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "r.json"
    atomic_write_json(p, {"v": 1})
    with pytest.raises(UnicodeEncodeError):
        atomic_write_json(p, {"v": "x" * 100_000 + "\ud800"})     # fails after part of it was written
    assert json.loads(p.read_text()) == {"v": 1}
    assert _entries(tmp_path) == ["r.json"]                        # no temporary file left
    with pytest.raises(UnicodeEncodeError):
        atomic_write_json(tmp_path / "new.json", {"v": "\ud800"})
    assert _entries(tmp_path) == ["r.json"]                        # a new file is not created half-way


KILL_MID_WRITE = """
    import os, sys, time
    from sftnb.infra import atomic
    def stall(fd):                                   # the data is written, the rename has not happened
        print("READY", flush=True)
        time.sleep(120)
    atomic.os.fsync = stall
    atomic.atomic_write_json(sys.argv[1], {"v": 2, "pad": "y" * 1_000_000})
"""


def test_kill_minus_9_during_atomic_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "result.json"
    atomic_write_text(p, json.dumps({"v": 1}))
    proc = _spawn(KILL_MID_WRITE, p)
    _kill_when_ready(proc)
    assert json.loads(p.read_text()) == {"v": 1}                   # readers see the old content, whole
    temps = [n for n in _entries(tmp_path) if n != "result.json"]
    assert len(temps) == 1 and temps[0].startswith(".result.json.tmp-")   # hidden, never the real name
