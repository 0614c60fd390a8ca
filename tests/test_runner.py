"""``sftnb run``: papermill execution, up-to-date notebooks skipped, --force, failures named."""
import json
import shutil
from pathlib import Path

import nbformat
import pytest

import sftnb.runner as runner
from sftnb.cli import main

ROOT = Path(__file__).resolve().parents[1]


def make_project(tmp_path: Path, body: str) -> Path:
    """A project folder with params/smoke.yaml and one notebook: a parameters cell, then ``body``."""
    (tmp_path / "params").mkdir()
    shutil.copy(ROOT / "params" / "smoke.yaml", tmp_path / "params" / "smoke.yaml")
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (tmp_path / "notebooks").mkdir()
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell("params_file = None")
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "notebooks" / "01_demo.ipynb")
    return tmp_path


WRITE = """import pathlib, time
out = pathlib.Path(params_file).parents[1] / "figures" / "smoke"
out.mkdir(parents=True, exist_ok=True)
(out / "table99_demo.csv").write_text(f"t\\n{time.time_ns()}\\n")"""


@pytest.mark.slow
def test_rerun_skips_up_to_date_notebooks_and_force_executes(tmp_path, monkeypatch, capsys):
    root = make_project(tmp_path, WRITE)
    monkeypatch.chdir(root)
    monkeypatch.setattr(runner, "project_root", lambda: root)
    artifact = root / "figures" / "smoke" / "table99_demo.csv"

    assert main(["run", "params/smoke.yaml"]) == 0
    first = artifact.read_text()
    assert "1 file(s): table99_demo.csv" in capsys.readouterr().out
    record = json.loads((root / "runs" / "smoke" / "notebooks" / "01_demo.done.json").read_text())
    assert list(record["artifacts"]) == ["table99_demo.csv"]

    assert main(["run", "params/smoke.yaml"]) == 0                 # nothing changed: not executed
    assert "up to date" in capsys.readouterr().out and artifact.read_text() == first

    assert main(["run", "params/smoke.yaml", "--force"]) == 0      # --force executes it
    assert "up to date" not in capsys.readouterr().out and artifact.read_text() != first

    second = artifact.read_text()
    with open(root / "params" / "smoke.yaml", "a") as fh:         # an edited params file: executed again
        fh.write("\n# edited\n")
    assert main(["run", "params/smoke.yaml"]) == 0
    assert "up to date" not in capsys.readouterr().out and artifact.read_text() != second

    third = artifact.read_text()
    artifact.unlink()                                               # a deleted artifact: executed again
    assert main(["run", "params/smoke.yaml"]) == 0
    assert "up to date" not in capsys.readouterr().out and artifact.read_text() != third


@pytest.mark.slow
def test_failing_notebook_is_named_with_its_cell(tmp_path, monkeypatch, capsys):
    root = make_project(tmp_path, "raise ValueError('bad things')")
    monkeypatch.chdir(root)
    monkeypatch.setattr(runner, "project_root", lambda: root)
    assert main(["run", "params/smoke.yaml"]) == 2
    err = capsys.readouterr().err
    assert "01_demo.ipynb failed in cell" in err and "ValueError: bad things" in err
    assert "Traceback" not in err
    assert not (root / "runs" / "smoke" / "notebooks" / "01_demo.done.json").exists()


def test_run_prints_the_memory_plan_and_refuses_a_run_that_does_not_fit(tmp_path, monkeypatch, capsys):
    import sftnb.plan

    root = make_project(tmp_path, WRITE)
    monkeypatch.chdir(root)
    monkeypatch.setattr(runner, "project_root", lambda: root)
    monkeypatch.setattr(sftnb.plan, "mem_total_gb", lambda: 1e-6)      # a machine with (almost) no memory
    assert main(["run", "params/smoke.yaml"]) == 2
    out, err = capsys.readouterr()
    assert out.strip().endswith("does not fit") and "sftnb: error: the memory plan above says" in err
    assert err.count("\n") == 1 and not (root / "runs").exists() and not (root / "figures").exists()
