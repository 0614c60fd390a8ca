"""Params (issue 2, item 9): one schema validates every params file before any work starts."""
from pathlib import Path

import pytest
import yaml

from sftnb.config import (SECTIONS, ExperimentConfig, dump, load_config, notebook_config, project_root,
                          read_params_file, validate)
from sftnb.infra.errors import SftnbError

ROOT = Path(__file__).resolve().parents[1]
PARAMS = sorted((ROOT / "params").glob("*.yaml"))
SMOKE = ROOT / "params" / "smoke.yaml"


def _error(raw=None, *, text=None, tmp_path=None) -> str:
    """The one-line SftnbError that validating ``raw`` (a dict) or a file holding ``text`` raises."""
    with pytest.raises(SftnbError) as e:
        if text is not None:
            p = tmp_path / "bad.yaml"
            p.write_text(text)
            load_config(p)
        else:
            validate(raw)
    msg = str(e.value)
    assert "\n" not in msg and msg.strip() == msg
    return msg


# ------------------------------------------------------------------------------------------ params files
def test_the_shipped_params_files_exist():
    assert {p.stem for p in PARAMS} >= {"smoke", "embedded", "entityquestions-smollm2", "paper-llama3-8b"}


@pytest.mark.parametrize("path", PARAMS, ids=lambda p: p.stem)
def test_every_params_file_validates_and_round_trips(path):
    cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig) and cfg.run_name == path.stem
    raw = read_params_file(path)
    assert set(raw) <= set(SECTIONS)
    again = validate(yaml.safe_load(dump(cfg)))                 # the dumped config validates to itself
    assert again == cfg


def test_paper_params_are_the_papers_values():
    cfg = load_config(ROOT / "params" / "paper-llama3-8b.yaml")
    assert (cfg.probe.n_templates, cfg.probe.n_samples, cfg.probe.temperature) == (21, 10, 0.7)
    assert cfg.grid.scales == [60, 120, 240, 480, 960, 1920, "all"] and cfg.grid.categories == [0, 1, 2, 3, 4]
    assert cfg.data.source == "entityquestions"


def test_defaults_without_a_file():
    cfg = load_config()
    assert cfg == validate({})
    assert cfg.data.source == "builtin" and cfg.probe.n_templates == 21 and cfg.restore.k_percents[-1] == 60


def test_empty_params_file_means_defaults(tmp_path):
    p = tmp_path / "empty.yaml"
    p.write_text("# nothing\n")
    assert load_config(p) == validate({})


# ------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("text,expect", [
    ("bogus: 1\n", "unknown key 'bogus'"),
    ("run_name: x\ngird:\n  seeds: [0]\n", "unknown key 'gird'"),
    ("grid:\n  scales: [60, 120]\n  seedz: [0]\n", "unknown key 'grid.seedz'"),
    ("sft:\n  lora:\n    rank: 8\n", "unknown key 'sft.lora.rank'"),
    ("models:\n  - name: a\n    path: b\n    bogus: 1\n", "unknown key 'models.0.bogus'"),
    ("run:\n  batch_size: 8\n", "unknown key 'run.batch_size'"),
])
def test_unknown_key_is_named(tmp_path, text, expect):
    msg = _error(text=text, tmp_path=tmp_path)
    assert msg == f"{tmp_path / 'bad.yaml'}: {expect}"


@pytest.mark.parametrize("raw,key", [
    ({"sft": {"learning_rate": "fast"}}, "sft.learning_rate"),
    ({"sft": {"learning_rate": 0}}, "sft.learning_rate"),
    ({"sft": {"scheduler": "cosin"}}, "sft.scheduler"),
    ({"probe": {"temperature": -1}}, "probe.temperature"),
    ({"probe": {"n_samples": 2.5}}, "probe.n_samples"),
    ({"probe": {"method": "vibes"}}, "probe.method"),
    ({"grid": {"categories": [0, 7]}}, "grid.categories"),
    ({"grid": {"seeds": [1, 0]}}, "grid.seeds"),
    ({"grid": {"seeds": []}}, "grid.seeds"),
    ({"grid": {"scales": ["all", 60]}}, "grid.scales"),
    ({"grid": {"scales": [120, 60]}}, "grid.scales"),
    ({"grid": {"scales": [60, "al"]}}, "grid.scales"),
    ({"grid": 5}, "grid"),
    ({"restore": {"k_percents": [0, 20]}}, "restore.k_percents"),
    ({"restore": {"k_percents": [20, 101]}}, "restore.k_percents"),
    ({"restore": {"region": "everywhere"}}, "restore.region"),
    ({"run": {"dtype": "float8"}}, "run.dtype"),
    ({"run": {"batch_tokens": 8}}, "run.batch_tokens"),
    ({"data": {"source": "wikidata"}}, "data.source"),
    ({"data": {"source": "entityquestions"}}, "data.path"),
    ({"data": {"max_train_per_relation": 0}}, "data.max_train_per_relation"),
    ({"token_kl": {"category": 5}}, "token_kl.category"),
    ({"run_name": "has space"}, "run_name"),
    ({"run_name": 5}, "run_name"),
    ({"models": []}, "models"),
    ({"models": [{"name": "a", "path": "x"}, {"name": "a", "path": "y"}]}, "models"),
    ({"models": [{"name": "a"}]}, "models.0.path"),
    ({"grid": {"models": ["nope"]}}, "grid.models"),
])
def test_bad_type_or_value_names_the_key(raw, key):
    msg = _error(raw)
    assert msg.startswith("params: ")
    assert key in msg, msg


@pytest.mark.parametrize("text,expect", [
    ("[1, 2]\n", "expected a mapping of sections"),
    ("grid: [\n", "not valid YAML"),
    ("a: b: c\n", "not valid YAML"),
])
def test_files_that_are_not_params(tmp_path, text, expect):
    assert expect in _error(text=text, tmp_path=tmp_path)


def test_missing_params_file(tmp_path):
    with pytest.raises(SftnbError, match="params file not found"):
        load_config(tmp_path / "nope.yaml")


# ------------------------------------------------------------------------------------------ overrides
def test_overrides_merge_key_by_key():
    base = load_config(SMOKE)
    cfg = load_config(SMOKE, {"grid": {"seeds": [0, 1]}, "probe": {"n_samples": 3}})
    assert cfg.grid.seeds == [0, 1] and cfg.probe.n_samples == 3
    assert cfg.grid.scales == base.grid.scales and cfg.probe.n_templates == base.probe.n_templates
    assert cfg.models == base.models and cfg.run_name == base.run_name
    assert load_config(None, {"run_name": "x"}).run_name == "x"
    models = [{"name": "m1", "path": "tiny-random"}, {"name": "m2", "path": "tiny-random"}]
    assert [m.name for m in load_config(SMOKE, {"models": models}).models] == ["m1", "m2"]


def test_overrides_are_validated_too():
    with pytest.raises(SftnbError, match=r"smoke\.yaml: grid\.seeds"):
        load_config(SMOKE, {"grid": {"seeds": [2, 1]}})
    with pytest.raises(SftnbError, match="unknown key 'grid.seedz'"):
        load_config(SMOKE, {"grid": {"seedz": [0]}})


# ------------------------------------------------------------------------------------------ notebooks
def test_notebook_config_from_a_parameters_cell(monkeypatch):
    monkeypatch.chdir(ROOT / "notebooks")                       # notebooks run one level below the root
    assert project_root() == ROOT
    namespace = {"params_file": "params/smoke.yaml", "grid": {"seeds": [3]}, "probe": None,
                 "__name__": "__main__", "np": object(), "cfg": None}   # other globals are ignored
    cfg = notebook_config(namespace)
    assert cfg.run_name == "smoke" and cfg.grid.seeds == [3]
    assert cfg.probe == load_config("params/smoke.yaml").probe   # None means "not injected"
    assert notebook_config({}) == validate({})                  # no parameters cell: the defaults
    assert notebook_config({"run_name": "nb", "data": {"source": "builtin"}}).run_name == "nb"
    with pytest.raises(SftnbError, match="unknown key 'grid.bogus'"):
        notebook_config({"params_file": "params/smoke.yaml", "grid": {"bogus": 1}})


def test_output_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)                                    # relative folders resolve against the project
    cfg = load_config(SMOKE)
    assert cfg.out_dir() == ROOT / "runs" / "smoke" and cfg.figures_dir() == ROOT / "figures" / "smoke"
    assert cfg.out_dir(tmp_path) == tmp_path / "runs" / "smoke"
    cfg = load_config(SMOKE, {"run": {"out_dir": str(tmp_path / "o"), "figures_dir": "f"}})
    # a folder the params give resolves against the project root when they are loaded; ``root`` places the defaults
    assert cfg.out_dir() == tmp_path / "o" and cfg.figures_dir(tmp_path) == ROOT / "f"


def test_project_root_from_a_subfolder(tmp_path):
    assert project_root(ROOT / "sftnb" / "resources") == ROOT
    assert project_root(tmp_path) == tmp_path.resolve()         # outside a project: the folder itself


def test_fastest_dtype_follows_the_cpu(monkeypatch):
    """`fastest` is bf16 only where the CPU computes it natively; `auto` keeps fp32 on any CPU."""
    import torch

    from sftnb.lm import models
    from sftnb.sft import resolve_precision
    assert models.native_bf16_in_cpuinfo("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n")
    assert models.native_bf16_in_cpuinfo("Features\t: fp asimd bf16 i8mm\n")
    assert not models.native_bf16_in_cpuinfo("flags\t\t: fpu sse2 avx2 fma\nflags\t: avx512_bf16\n")   # first only
    assert not models.native_bf16_in_cpuinfo("")
    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: native)
        assert models.resolve_dtype("fastest", cpu) == (torch.bfloat16 if native else torch.float32)
        assert models.resolve_dtype("auto", cpu) == torch.float32
        assert resolve_precision("fastest", cpu) == ("bf16-mixed" if native else "fp32")
        assert resolve_precision("auto", cpu) == "fp32" and resolve_precision("bf16-mixed", cpu) == "bf16-mixed"
    assert load_config(SMOKE, {"run": {"inference_dtype": "fastest"}, "sft": {"precision": "fastest"}})
