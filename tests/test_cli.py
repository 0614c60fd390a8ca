"""`sftnb data summary` (issue 2, item 8) and the CLI's bad-input contract: one line, status 2, nothing written."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sftnb.data.builtin import load_builtin
from sftnb.cli import main
from sftnb.data.relations import builtin_relations, entityquestions_relations

ROOT = Path(__file__).resolve().parents[1]
EQ = entityquestions_relations()


def _q(rel_id, subject, answer="X"):
    return {"question": EQ[rel_id].question(subject), "answers": [answer]}


def _write(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj), encoding="utf-8")
    return path


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def _totals(out: str) -> dict[str, list[int]]:
    """The per-domain totals table at the end of the summary: domain -> [train, dev, test, unmatched, rels]."""
    rows = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in ("in", "out", "all") and len(parts) == 6:
            rows[parts[0]] = [int(x) for x in parts[1:]]
    return rows


# ------------------------------------------------------------------------------------------ summaries
def test_data_summary_builtin(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["data", "summary", "--source", "builtin"]) == 0
    captured = capsys.readouterr()
    n = len(load_builtin().facts)
    assert captured.out.splitlines()[0] == (f"source: builtin  relations: {len(builtin_relations())}  "
                                            f"facts: {n}  unmatched questions: 0")
    for rel in builtin_relations():
        assert rel in captured.out
    totals = _totals(captured.out)
    assert sum(totals["all"][:3]) == n and totals["all"][3] == 0
    assert totals["out"][:2] == [0, 0]                   # out-of-domain facts are test facts only
    assert captured.err == "" and list(tmp_path.iterdir()) == []


def test_data_summary_entityquestions_fixture(tmp_path, capsys):
    root = tmp_path / "eq"
    _write(root / "train" / "P17.train.json", [_q("P17", "A"), _q("P17", "B"), {"question": "Huh?", "answers": ["x"]}])
    _write(root / "test" / "P106.test.jsonl", json.dumps(_q("P106", "C")) + "\n")
    with pytest.warns(UserWarning):
        assert main(["data", "summary", "--source", "entityquestions", "--path", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "source: entityquestions  relations: 2  facts: 3  unmatched questions: 1"
    assert "unmatched: P17.train.json: Huh?" in out
    rows = {ln.split()[0]: ln.split()[1:] for ln in out.splitlines() if ln.strip().startswith("P")}
    assert rows == {"P17": ["in", "2", "0", "0", "1"], "P106": ["out", "0", "0", "1", "0"]}
    assert _totals(out) == {"in": [2, 0, 0, 1, 1], "out": [0, 0, 1, 0, 1], "all": [2, 0, 1, 1, 2]}


def test_data_summary_facts_file(tmp_path, capsys):
    p = _write(tmp_path / "f.jsonl", json.dumps({"relation": "P36", "subject": "France", "answers": ["Paris"]}) + "\n")
    assert main(["data", "summary", "--source", "file", "--path", str(p)]) == 0
    assert capsys.readouterr().out.startswith("source: file  relations: 1  facts: 1  unmatched questions: 0")


def test_data_summary_entityquestions_official(shared_data, capsys):
    assert main(["data", "summary", "--source", "entityquestions", "--path", str(shared_data)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == ("source: entityquestions  relations: 24  facts: 220703  "
                                   "unmatched questions: 0")
    totals = _totals(out)
    assert totals["in"] == [78611, 9825, 9828, 0, 10]
    assert totals["out"] == [97949, 12243, 12247, 0, 14]
    assert totals["all"] == [176560, 22068, 22075, 0, 24]


# ------------------------------------------------------------------------------------------ bad input
def _bad_not_json(d: Path) -> list[str]:
    _write(d / "eq" / "train" / "P17.train.json", "this is not JSON\n")
    return ["data", "summary", "--source", "entityquestions", "--path", str(d / "eq")]


def _bad_unknown_relation(d: Path) -> list[str]:
    _write(d / "eq" / "train" / "P17.train.json", [_q("P17", "A")])
    _write(d / "eq" / "dev" / "P4242.dev.json", [_q("P17", "A")])
    return ["data", "summary", "--source", "entityquestions", "--path", str(d / "eq")]


def _bad_binary(d: Path) -> list[str]:
    p = d / "eq" / "test" / "P36.test.json"
    p.parent.mkdir(parents=True)
    p.write_bytes(b"\xff\xfe\x00garbage")
    return ["data", "summary", "--source", "entityquestions", "--path", str(d / "eq")]


def _bad_facts_line(d: Path) -> list[str]:
    _write(d / "f.jsonl", '{"relation": "P36", "subject": "France", "answers": ["Paris"]}\n{oops\n')
    return ["data", "summary", "--source", "file", "--path", str(d / "f.jsonl")]


def _bad_params_key(d: Path) -> list[str]:
    _write(d / "p.yaml", "run_name: t\ngird:\n  seeds: [0]\n")
    return ["run", str(d / "p.yaml")]


def _bad_params_value(d: Path) -> list[str]:
    _write(d / "p.yaml", "run_name: t\nprobe:\n  temperature: hot\n")
    return ["run", str(d / "p.yaml")]


BAD = {
    "missing path": (lambda d: ["data", "summary", "--source", "entityquestions", "--path", str(d / "nope")],
                     "not found"),
    "missing --path": (lambda d: ["data", "summary", "--source", "entityquestions"], "needs --path"),
    "missing file": (lambda d: ["data", "summary", "--source", "file"], "needs data.path"),
    "not JSON": (_bad_not_json, "not valid JSON"),
    "not UTF-8": (_bad_binary, "not UTF-8"),
    "unknown relation id": (_bad_unknown_relation, "unknown relation id 'P4242'"),
    "bad facts line": (_bad_facts_line, ":2: malformed JSON line"),
    "unknown subcommand": (lambda d: ["frobnicate"], "invalid choice: 'frobnicate'"),
    "unknown data subcommand": (lambda d: ["data", "sumary"], "invalid choice: 'sumary'"),
    "unknown source": (lambda d: ["data", "summary", "--source", "wikidata"], "invalid choice: 'wikidata'"),
    "no command": (lambda d: [], "required: command"),
    "no --source": (lambda d: ["data", "summary"], "required: --source"),
    "unknown option": (lambda d: ["data", "summary", "--source", "builtin", "--frob"], "unrecognized arguments"),
    "params not found": (lambda d: ["run", str(d / "nope.yaml")], "params file not found"),
    "params misspelled key": (_bad_params_key, "unknown key 'gird'"),
    "params bad value": (_bad_params_value, "probe.temperature"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_status_2_nothing_written(case, tmp_path, monkeypatch, capsys):
    make_argv, expect = BAD[case]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    argv = make_argv(inputs)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    before = _snapshot(inputs)
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert len(err) == 1, captured.err
    assert err[0].startswith("sftnb: error: ") and expect in err[0], err[0]
    assert "Traceback" not in captured.err and not err[0].startswith("sftnb: error: sftnb: ")
    assert captured.out == ""
    assert list(work.iterdir()) == [] and _snapshot(inputs) == before      # nothing written
    assert not (ROOT / "runs" / "t").exists()                            # the bad params' run_name


# ------------------------------------------------------------------------------------------ real processes
def _run(*argv, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "default"}
    return subprocess.run([sys.executable, "-m", "sftnb", *argv], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


@pytest.mark.slow
def test_python_m_sftnb_in_a_real_process(tmp_path):
    ok = _run("data", "summary", "--source", "builtin", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("source: builtin") and "country_capital" in ok.stdout and ok.stderr == ""

    _write(tmp_path / "eq" / "train" / "P17.train.json", "{nope")
    bad = _run("data", "summary", "--source", "entityquestions", "--path", str(tmp_path / "eq"), cwd=tmp_path)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.count("\n") == 1 and bad.stderr.startswith("sftnb: error: ")
    assert "not valid JSON" in bad.stderr and "Traceback" not in bad.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eq"]
