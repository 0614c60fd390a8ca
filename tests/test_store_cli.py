"""Issue 2: the results store (atomic, resumable, kill -9 safe) and the CLI's one-line errors."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from sftnb.cli import main
from sftnb.store import Store, atomic_write_json, spec_hash


def test_unit_computed_once_then_reused(tmp_path):
    calls = []

    def fn(tmp):
        calls.append(1)
        (tmp / "data.txt").write_text("payload")
        return {"value": 42}

    store = Store(tmp_path)
    assert store.compute("probe", {"a": 1}, fn)["value"] == 42
    again = Store(tmp_path)
    assert again.compute("probe", {"a": 1}, fn)["value"] == 42
    assert len(calls) == 1 and len(again.reused) == 1 and not again.computed
    assert again.unit("probe", {"a": 1}).file("data.txt").read_text() == "payload"
    assert spec_hash("probe", {"a": 1, "b": 2}) == spec_hash("probe", {"b": 2, "a": 1})
    assert spec_hash("probe", {"a": 1}) != spec_hash("probe", {"a": 2}) != spec_hash("sft", {"a": 2})


def test_failed_unit_leaves_nothing_and_is_recomputed(tmp_path):
    store = Store(tmp_path)

    def boom(tmp):
        (tmp / "half.bin").write_bytes(b"x" * 100)
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        store.compute("sft", {"k": 1}, boom)
    unit = store.unit("sft", {"k": 1})
    assert not unit.done and not unit.path.exists()
    assert list((tmp_path / "sft").iterdir()) == []
    assert store.compute("sft", {"k": 1}, lambda tmp: {"ok": True}) == {"ok": True} | {
        "_seconds": store.unit("sft", {"k": 1}).result()["_seconds"]}


def test_kill_minus_9_mid_unit_then_resume(tmp_path):
    """A real process is killed (SIGKILL) while writing a unit; the rerun recomputes it, reuses the finished one."""
    script = textwrap.dedent(f"""
        import sys, time
        from sftnb.store import Store
        store = Store({str(tmp_path)!r})
        store.compute("unit", {{"i": 0}}, lambda tmp: {{"i": 0}})
        def slow(tmp):
            (tmp / "weights.bin").write_bytes(b"w" * 1000)
            print("writing", flush=True)
            time.sleep(60)
            return {{"i": 1}}
        store.compute("unit", {{"i": 1}}, slow)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    leftovers = [p for p in (tmp_path / "unit").iterdir() if p.name.startswith(".")]
    assert leftovers                               # the dead process's temp dir is there ...
    store = Store(tmp_path)                        # ... and the next run cleans it
    assert not any(p.name.startswith(".") for p in (tmp_path / "unit").iterdir())
    calls = []
    store.compute("unit", {"i": 0}, lambda tmp: calls.append(0) or {"i": 0})
    store.compute("unit", {"i": 1}, lambda tmp: calls.append(1) or {"i": 1})
    assert calls == [1]                            # finished unit reused, interrupted one recomputed


def test_atomic_write_json_keeps_old_content_on_failure(tmp_path):
    p = tmp_path / "r.json"
    atomic_write_json(p, {"v": 1})
    with pytest.raises(UnicodeEncodeError):
        atomic_write_json(p, {"v": "\ud800"})          # fails while writing: a lone surrogate
    assert p.read_text().strip().startswith("{") and '"v": 1' in p.read_text()
    assert [x.name for x in tmp_path.iterdir()] == ["r.json"]


# ------------------------------------------------------------------------------------------ CLI
def test_data_summary_builtin(capsys):
    assert main(["data", "summary", "--source", "builtin"]) == 0
    out = capsys.readouterr().out
    assert "country_capital" in out and "unmatched questions: 0" in out


def test_data_summary_entityquestions(shared_data, capsys):
    assert main(["data", "summary", "--source", "entityquestions", "--path", str(shared_data)]) == 0
    out = capsys.readouterr().out
    for n in ("78611", "97949", "9825", "12243", "9828", "12247"):
        assert n in out
    assert "relations: 24" in out


@pytest.mark.parametrize("argv,msg", [
    (["data", "summary", "--source", "entityquestions"], "needs --path"),
    (["data", "summary", "--source", "entityquestions", "--path", "/no/such/dir"], "not found"),
    (["data", "summary", "--source", "file", "--path", "/no/such.jsonl"], "not found"),
    (["frobnicate"], "invalid choice"),
    (["run", "/no/params.yaml"], "params file not found"),
    (["probe", "--model", "/no/model", "--facts", "builtin:test", "--out", "x.jsonl"], "not found"),
])
def test_bad_input_is_one_line(tmp_path, monkeypatch, capsys, argv, msg):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sftnb: error:") and msg in err[0]
    assert list(tmp_path.iterdir()) == []                 # nothing written


def test_probe_bad_facts_files(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"relation": "country_capital", "subject": "France", "answers": ["Paris"]}\n{oops\n')
    for facts in (empty, bad):
        assert main(["probe", "--model", "tiny-random", "--facts", str(facts), "--out",
                     str(tmp_path / "o.jsonl")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("sftnb: error:")
    assert not (tmp_path / "o.jsonl").exists()


def test_params_file_with_misspelled_key_via_cli(tmp_path, capsys):
    p = tmp_path / "p.yaml"
    p.write_text("run_name: t\ngird:\n  seeds: [0]\n")
    assert main(["run", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"sftnb: error: {p}: unknown key 'gird'"


def test_cli_in_a_real_process():
    t = time.time()
    r = subprocess.run([sys.executable, "-m", "sftnb", "data", "summary", "--source", "nope"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert time.time() - t < 60
