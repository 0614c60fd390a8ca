"""The experiment schema: one validated config for every notebook, the CLI and ``sftnb run``.

A params file (``params/*.yaml``) holds sections of this schema (``sftnb.sections``, and ``restore`` here);
anything it leaves out takes the default there, which is the paper's value. The *recipe* (what is computed:
data, models, probe, sft, grid, eval, token_kl, restore) is kept apart from the *run options* (``run``: device,
dtype, batch sizes, folders), which never change a result's identity beyond what they must (dtype does; the
folder does not).

Validation happens before any work: an unknown key, a wrong type or an impossible value is one line that
names the key (``SftnbError``). Loading (``load_config``) also makes every relative path absolute against the
project root (``resolve_paths``), once, so no consumer depends on its working directory.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from .infra.errors import SftnbError
from .restoration.strategies import StrategyName
from .data.scales import Scale
# the params' sections (sftnb/schema.py), importable from here as before; RestoreConfig lives here, beside the whole
from .schema import (BUILTIN_MODELS, DataConfig, EvalConfig, GridConfig, InjectConfig, LoraConfig,  # noqa: F401
                     ModelConfig, ProbeConfig, RunOptions, SFTConfig, TaskConfig, TokenKLConfig)
from .schema import Section as _Section, check_seeds as _check_seeds, sorted_unique as _sorted_unique


class RestoreConfig(_Section):
    """Parameter restoration (§5, App. B.2, E)."""
    k_percents: list[float] = [1, 3, 5, 10, 20, 40, 60]   # restore the top-k% most changed (Table 4)
    train_k_percents: list[float] = [5, 20]              # Table 6 (training set)
    train_scales: Optional[list[Scale]] = None           # Table 6's kept scales (None: every kept scale)
    train_sample: Optional[int] = Field(None, ge=1)      # Table 6 on a seeded sample of this many of each model's
                                                        # training facts where it has more (None: all of them)
    region: Literal["transformer", "mlp", "attention", "embedding", "all"] = "transformer"
    strategies: list[StrategyName] = ["top"]             # names of sftnb.restoration.strategies.STRATEGIES
    redundant_k_percent: float = Field(20, gt=0, le=100)  # Tables 9-10: where the restored updates sit
    layer_group_size: int = Field(4, ge=1)               # Table 11: layers 0-3, 4-7, ...
    layer_seeds: Optional[list[int]] = None             # Table 11's models (None: the first grid seed)
    seeds: Optional[list[int]] = None                   # Tables 4, 6, 7's models (None: every grid seed)
    models: Optional[list[str]] = None                  # models whose kept checkpoints are restored (Tables 4,
                                                        # 6, 7, 11; None: every grid model); Table 3 is for all

    @field_validator("k_percents", "train_k_percents")
    @classmethod
    def _ks(cls, v):
        if any(not (0 < k <= 100) for k in v):
            raise ValueError("k percents must lie in (0, 100]")
        return _sorted_unique(v, "k percents")

    _seeds = field_validator("seeds")(classmethod(lambda cls, v: v if v is None else _check_seeds(v)))


class ExperimentConfig(_Section):
    run_name: str = "smoke"
    data: DataConfig = DataConfig()
    models: list[ModelConfig] = [ModelConfig(name="SmolLM2-135M", path="smollm2-135m")]
    probe: ProbeConfig = ProbeConfig()
    sft: SFTConfig = SFTConfig()
    grid: GridConfig = GridConfig()
    eval: EvalConfig = EvalConfig()
    token_kl: TokenKLConfig = TokenKLConfig()
    restore: RestoreConfig = RestoreConfig()
    tasks: list[TaskConfig] = []               # Table 5 (run for the main model)
    run: RunOptions = RunOptions()

    @field_validator("run_name")
    @classmethod
    def _name(cls, v):
        if not v or not all(c.isalnum() or c in "-_." for c in v):
            raise ValueError("run_name: letters, digits, '-', '_' and '.' only")
        return v

    @model_validator(mode="after")
    def _models(self):
        if not self.models:
            raise ValueError("models: at least one model")
        names = [m.name for m in self.models]
        if len(set(names)) != len(names):
            raise ValueError("models: names must be unique")
        for where, listed in (("grid.models", self.grid.models), ("restore.models", self.restore.models)):
            unknown = set(listed or []) - set(names)
            if unknown:
                raise ValueError(f"{where} names unknown model(s): {', '.join(sorted(unknown))}")
        return self

    # ------------------------------------------------------------------ derived
    @property
    def main_model(self) -> ModelConfig:
        return self.models[0]

    @property
    def grid_models(self) -> list[ModelConfig]:
        return [m for m in self.models if self.grid.models is None or m.name in self.grid.models]

    @property
    def restore_models(self) -> list[ModelConfig]:
        """The grid models whose kept checkpoints are restored (Tables 4, 6, 7, 11): ``restore.models`` or all."""
        return [m for m in self.grid_models if self.restore.models is None or m.name in self.restore.models]

    def out_dir(self, root: Path | None = None) -> Path:
        return _resolve(self.run.out_dir or f"runs/{self.run_name}", root)

    def figures_dir(self, root: Path | None = None) -> Path:
        return _resolve(self.run.figures_dir or f"figures/{self.run_name}", root)


SECTIONS = tuple(ExperimentConfig.model_fields)
RESOLVED_PARAMS = "params.resolved.yaml"      # written beside a run's figures by ``sftnb run``


def _is_project(folder: Path) -> bool:
    return (folder / "params").is_dir() and (folder / "pyproject.toml").is_file()


def project_root(start: Path | None = None) -> Path:
    """The folder holding ``params/`` and ``pyproject.toml`` (notebooks run one level below it)."""
    here = (start or Path.cwd()).resolve()
    for p in (here, *here.parents):
        if _is_project(p):
            return p
    return here


def params_root(params_file: str | Path | None = None) -> Path:
    """What a params file's relative paths mean: the project that holds the file (wherever the command runs:
    papermill starts notebooks in ``notebooks/``), else the project around the working directory."""
    if params_file:
        around = project_root(_resolve(params_file).parent)
        if _is_project(around):
            return around
    return project_root()


def _resolve(path: str | Path, root: Path | None = None) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (root or project_root()) / p


def resolve_paths(cfg: ExperimentConfig, root: Path) -> ExperimentConfig:
    """``cfg`` with every path that a params file may give relative to the project root made absolute against
    ``root``: data.path, models[].path (a folder, not a built-in name) and instruct_path, tasks' train_path /
    test_path, run.out_dir / figures_dir. The run's default folders (``runs/<run_name>``) stay unset."""
    def absolute(path: str | None) -> str | None:
        return None if path is None else os.path.normpath(_resolve(path, root))

    def model_path(path: str | None) -> str | None:
        return path if path in BUILTIN_MODELS else absolute(path)

    return cfg.model_copy(update={
        "data": cfg.data.model_copy(update={"path": absolute(cfg.data.path)}),
        "models": [m.model_copy(update={"path": model_path(m.path), "instruct_path": model_path(m.instruct_path)})
                   for m in cfg.models],
        "tasks": [t.model_copy(update={"train_path": absolute(t.train_path), "test_path": absolute(t.test_path)})
                  for t in cfg.tasks],
        "run": cfg.run.model_copy(update={"out_dir": absolute(cfg.run.out_dir),
                                          "figures_dir": absolute(cfg.run.figures_dir)})})


def _format_error(e: ValidationError, origin: str) -> str:
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"{origin}: unknown key '{loc}'"
    msg = err["msg"].removeprefix("Value error, ")
    more = f" (+{len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    return f"{origin}: {loc}: {msg}{more}"


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_params_file(path: str | Path) -> dict:
    p = _resolve(path)
    if not p.is_file():
        raise SftnbError(f"params file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise SftnbError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise SftnbError(f"{p}: expected a mapping of sections ({', '.join(SECTIONS)})")
    return raw


def validate(raw: dict, origin: str = "params") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise SftnbError(_format_error(e, origin)) from None


def load_config(params_file: str | Path | None = None, overrides: dict | None = None) -> ExperimentConfig:
    """Validate a params file, with ``overrides`` (same sections, merged key by key) on top; its relative paths
    resolved against the project root (``params_root``, ``resolve_paths``), once, here: every consumer -- the
    CLI, ``sftnb run``, the notebooks (which run in ``notebooks/``), the tests -- sees absolute paths."""
    raw = read_params_file(params_file) if params_file else {}
    origin = str(params_file) if params_file else "params"
    if overrides:
        raw = _deep_merge(raw, overrides)
    return resolve_paths(validate(raw, origin), params_root(params_file))


def notebook_config(namespace: dict[str, Any]) -> ExperimentConfig:
    """Build the config inside a notebook from its ``parameters`` cell.

    The cell sets ``params_file`` (a file of this schema) and may set any section name to a dict; papermill
    injects those (``-f params/x.yaml`` or ``-p grid '{...}'``) and they override the file key by key.
    """
    overrides = {}
    for k in SECTIONS:
        v = namespace.get(k)
        if isinstance(v, str) and k != "run_name":     # `papermill -p grid '{"seeds": [0]}'` passes a string
            try:
                v = yaml.safe_load(v)
            except yaml.YAMLError:
                raise SftnbError(f"parameter {k!r}: not valid YAML/JSON: {v!r}") from None
        if v is not None:
            overrides[k] = v
    return load_config(namespace.get("params_file"), overrides)


def dump(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def write_resolved(cfg: ExperimentConfig, folder: Path) -> Path:
    """``folder/params.resolved.yaml``: the params a run used, every default filled in and every path absolute
    (atomically)."""
    from .infra.atomic import atomic_write_text

    path = Path(folder) / RESOLVED_PARAMS
    atomic_write_text(path, dump(cfg))
    return path
