"""Paths in params resolve against the project root, whatever the working directory (papermill runs the notebooks
in ``notebooks/``); ``sftnb run`` writes the resolved params and the report beside the run's figures."""
import json
import os
import shutil
from pathlib import Path

import nbformat
import pytest
import yaml

import sftnb.runner as runner
from sftnb.cli import main
from sftnb.config import RESOLVED_PARAMS, load_config, notebook_config, validate
from sftnb.data.sources import load_source

ROOT = Path(__file__).resolve().parents[1]

FACTS = [{"relation": "P36", "subject": "France", "answers": ["Paris"], "split": "train"},
         {"relation": "P36", "subject": "Japan", "answers": ["Tokyo"], "split": "test"}]
PARAMS = """run_name: paths
data:
  source: file
  path: data/facts.jsonl              # relative to the project root
models:
  - name: tiny
    path: tiny-random                 # a built-in name: kept as it is
  - name: local
    path: models/local                # a folder: resolved
    instruct_path: models/instruct
tasks:
  - name: t
    source: files
    metric: gsm8k
    train_path: data/train.jsonl
    test_path: data/test.jsonl
run:
  out_dir: store
  figures_dir: figs
"""


@pytest.fixture
def project(tmp_path):
    """A project folder (params/, pyproject.toml) with a facts file, a params file and a notebooks/ folder."""
    root = tmp_path / "proj"
    for sub in ("params", "data", "notebooks"):
        (root / sub).mkdir(parents=True)
    (root / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    (root / "data" / "facts.jsonl").write_text("".join(json.dumps(f) + "\n" for f in FACTS))
    (root / "params" / "paths.yaml").write_text(PARAMS)
    return root


def test_relative_paths_resolve_against_the_project_root_from_a_subfolder(project, monkeypatch):
    monkeypatch.chdir(project / "notebooks")                 # where papermill runs a notebook
    for cfg in (load_config(project / "params" / "paths.yaml"),
                notebook_config({"params_file": "params/paths.yaml"})):   # the parameters cell's, as in a notebook
        assert cfg.data.path == str(project / "data" / "facts.jsonl")
        assert len(load_source(cfg.data.source, cfg.data.path).facts) == 2          # found, not ../data/...
        assert [m.path for m in cfg.models] == ["tiny-random", str(project / "models" / "local")]
        assert cfg.models[1].instruct_path == str(project / "models" / "instruct")
        assert (cfg.tasks[0].train_path, cfg.tasks[0].test_path) == (str(project / "data" / "train.jsonl"),
                                                                    str(project / "data" / "test.jsonl"))
        assert cfg.out_dir() == project / "store" and cfg.figures_dir() == project / "figs"


def test_paths_resolve_from_outside_the_project_and_absolute_ones_stay(project, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)                                # not inside any project
    cfg = load_config(project / "params" / "paths.yaml", {"data": {"path": "~/elsewhere/../facts.jsonl"}})
    assert cfg.data.path == str(Path.home() / "facts.jsonl")
    assert cfg.figures_dir() == project / "figs"
    assert load_config(project / "params" / "paths.yaml", {"run": {"out_dir": "/abs/o"}}).out_dir() == Path("/abs/o")
    # validated but not loaded (no params file, no root to resolve against): as given
    assert validate(yaml.safe_load(PARAMS)).data.path == "data/facts.jsonl"


def test_a_missing_relative_data_path_names_the_resolved_folder(project, monkeypatch):
    monkeypatch.chdir(project / "notebooks")
    cfg = load_config("params/paths.yaml", {"data": {"source": "entityquestions", "path": "../shared/eq"}})
    from sftnb.infra.errors import SftnbError
    with pytest.raises(SftnbError, match=f"not a directory: {project.parent / 'shared' / 'eq'}$"):
        load_source(cfg.data.source, cfg.data.path)


def _fake_papermill(monkeypatch, seen: list):
    """papermill.execute_notebook without a kernel: what a notebook's first cells do (in the notebook's folder,
    as papermill runs it), then one CSV table, and the notebook copied to the output path."""
    import papermill

    def execute_notebook(src, dst, parameters, cwd, **_):
        here = Path.cwd()
        os.chdir(cwd)                                         # the kernel's working directory, not the caller's
        try:
            cfg = notebook_config(parameters)
            seen.append((Path.cwd(), cfg, len(load_source(cfg.data.source, cfg.data.path).facts)))
        finally:
            os.chdir(here)
        cfg.figures_dir().mkdir(parents=True, exist_ok=True)
        (cfg.figures_dir() / f"table99_{Path(src).stem}.csv").write_text("t\n1\n")
        shutil.copy(src, dst)

    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)


def test_run_writes_the_resolved_params_and_the_report(project, monkeypatch, capsys):
    import sftnb.plan

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, project / "notebooks" / "01_demo.ipynb")
    params = yaml.safe_load(PARAMS)
    params["models"], params["tasks"] = params["models"][:1], []          # a model the memory plan can read
    (project / "params" / "paths.yaml").write_text(yaml.safe_dump(params))
    seen: list = []
    _fake_papermill(monkeypatch, seen)
    monkeypatch.setattr(runner, "project_root", lambda: project)
    monkeypatch.setattr(sftnb.plan, "mem_total_gb", lambda: 64.0)
    monkeypatch.chdir(project)

    assert main(["run", "params/paths.yaml"]) == 0
    (cwd, cfg, n_facts), = seen
    assert cwd == project / "notebooks" and n_facts == 2 and cfg.data.path == str(project / "data" / "facts.jsonl")
    figs = project / "figs"
    resolved = yaml.safe_load((figs / RESOLVED_PARAMS).read_text())
    assert resolved["data"]["path"] == str(project / "data" / "facts.jsonl")
    assert resolved["run"]["out_dir"] == str(project / "store") and resolved["run"]["figures_dir"] == str(figs)
    assert resolved["probe"]["n_templates"] == 21 and resolved["models"][0]["path"] == "tiny-random"  # defaults in
    assert validate(resolved) == load_config(project / "params" / "paths.yaml")       # the same run, reloadable
    # the report, as `sftnb report` writes it, once the notebooks ran
    report = (figs / "report.md").read_text()
    assert report.startswith("# Paper vs this run") and (figs / "report_verdicts.csv").is_file()
    assert f"report {figs / 'report.md'}" in capsys.readouterr().out
    stamp = (figs / "report.md").stat().st_mtime_ns
    assert main(["run", "params/paths.yaml"]) == 0                 # up to date: the report is not rewritten
    assert "up to date" in capsys.readouterr().out and len(seen) == 1
    assert (figs / "report.md").stat().st_mtime_ns == stamp

    # `sftnb report` writes the same file (unchanged: not rewritten) and the README's verdict section
    from sftnb.report import readme_markers
    README_BEGIN, README_END = readme_markers(figs.name)
    other = "\n".join(readme_markers("another-run"))              # another run's block is left as it is
    readme = project / "README.md"
    readme.write_text(f"intro\n{README_BEGIN}\nold\n{README_END}\noutro\n{other}\n")
    assert main(["report", str(figs), "--readme", str(readme)]) == 0
    assert (figs / "report.md").stat().st_mtime_ns == stamp and (figs / "report.md").read_text() == report
    text = readme.read_text()
    assert text.startswith(f"intro\n{README_BEGIN}\n") and text.endswith(f"{README_END}\noutro\n{other}\n")
    assert "old" not in text
    readme.write_text(f"only another run's block\n{other}\n")
    assert main(["report", str(figs), "--readme", str(readme)]) == 2
    assert f"needs one section for the run {figs.name!r}" in capsys.readouterr().err
    assert readme.read_text() == f"only another run's block\n{other}\n"
