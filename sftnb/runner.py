"""``sftnb run params/<name>.yaml``: execute notebooks 01-06 headless with papermill, in order.

Executed copies go to ``<out>/notebooks/``; the results store under ``<out>`` makes a rerun reuse every finished
unit. For each notebook it prints the time, how many store units were computed and reused, and the artifacts
written; a failing notebook stops the run with the notebook, the cell and the error named.

A notebook whose inputs are unchanged since it last succeeded -- the notebook, the params file and papermill
parameters, the ``sftnb`` package's files and the torch / transformers / peft versions -- and whose artifacts are
still as it wrote them (size and mtime) is not executed again: a rerun of a finished job takes seconds, not a
kernel start and a model load per notebook. ``--force`` executes every notebook anyway (e.g. after changing a
data file that a params file points to, which is not part of the fingerprint).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

from .config import load_config, project_root, write_resolved
from .experiment import Experiment
from .infra.errors import SftnbError
from .infra.atomic import atomic_write_json, atomic_write_text, temp_sibling

PACKAGE = Path(__file__).resolve().parent


def notebooks(root: Path, only: str | None = None) -> list[Path]:
    found = sorted((root / "notebooks").glob("0[1-9]_*.ipynb"))
    if not found:
        raise SftnbError(f"no notebooks found in {root / 'notebooks'}")
    if only:
        wanted = {w.strip().zfill(2) for w in only.split(",") if w.strip()}
        unknown = wanted - {p.name[:2] for p in found}
        if unknown:
            raise SftnbError(f"--only: no notebook numbered {', '.join(sorted(unknown))} "
                             f"(have {', '.join(p.name[:2] for p in found)})")
        found = [p for p in found if p.name[:2] in wanted]
    return found


def _log_events(log: Path, since: float) -> tuple[int, int]:
    if not log.is_file():
        return 0, 0
    computed = reused = 0
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue                       # a line cut by a kill: ignore it
        if e.get("t", 0) >= since:
            computed += e["event"] == "computed"
            reused += e["event"] == "reused"
    return computed, reused


def _digest(files) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()


def code_digest() -> str:
    """The ``sftnb`` package's files and the torch / transformers / peft versions (once per run)."""
    from importlib.metadata import PackageNotFoundError, version

    versions = []
    for dist in ("torch", "transformers", "peft"):
        try:
            versions.append(f"{dist}=={version(dist)}")
        except PackageNotFoundError:
            pass
    files = sorted(p for p in PACKAGE.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return _digest(files) + ";" + ",".join(versions)


def fingerprint(nb: Path, params: Path, parameters: dict, code: str) -> str:
    """What a notebook's outputs depend on, besides the results store (which keys its own units)."""
    return hashlib.sha256(f"{_digest([nb, params])};{code};{json.dumps(parameters, sort_keys=True)}".encode()
                          ).hexdigest()


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def up_to_date(record: Path, target: Path, figures: Path, fp: str) -> list[str] | None:
    """The artifacts of a notebook's last successful execution when nothing it depends on changed, else None."""
    try:
        done = json.loads(record.read_text(encoding="utf-8"))
        if done["fingerprint"] != fp or not target.is_file():
            return None
        if any(_stamp(figures / name) != stamp for name, stamp in done["artifacts"].items()):
            return None
        return sorted(done["artifacts"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# glibc returns large freed blocks to the OS and faults fresh pages in on every new one: for the per-step gradient
# of a tied 28M-entry embedding that is ~15 % of a CPU SFT step. Keeping freed memory in the heap (reused, never
# trimmed) avoids it; the kernels papermill starts inherit these, unless the user set their own.
_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(1 << 34), "MALLOC_TRIM_THRESHOLD_": str(1 << 34)}


def _allocator_env() -> None:
    for k, v in _MALLOC.items():
        os.environ.setdefault(k, v)


def publish_notebooks(executed: Path, target: Path, root: Path) -> Path:
    """Copies of the executed notebooks for readers (``figures/<run>/notebooks/``): progress bars and other stderr
    output removed, the machine's paths replaced by paths relative to the project, papermill's timing metadata
    dropped, so the copies change only when a result does."""
    import nbformat

    for nb_path in sorted(executed.glob("0[1-9]_*.ipynb")):
        nb = nbformat.read(nb_path, as_version=4)
        nb.metadata.pop("papermill", None)
        for cell in nb.cells:
            cell.metadata.pop("papermill", None)
            cell.metadata.pop("execution", None)
            if cell.cell_type != "code":
                continue
            cell.outputs = [o for o in cell.outputs if not (o.output_type == "stream" and o.name == "stderr")]
            for o in cell.outputs:
                if o.output_type == "stream":
                    o.text = o.text.replace(str(root) + "/", "")
                for key in ("text/plain", "text/html", "text/markdown"):
                    if key in o.get("data", {}):
                        o.data[key] = o.data[key].replace(str(root) + "/", "")
        text = nbformat.writes(nb).replace(str(root) + "/", "")
        atomic_write_text(target / nb_path.name, text + ("" if text.endswith("\n") else "\n"))
    return target


def _check_memory_plan(cfg, params: Path) -> None:
    """Print the memory plan (``sftnb plan``; rank 0 only) and refuse a run that does not fit, before any work:
    better one line now than an out-of-memory error hours in. A multi-process GPU run plans for its world size."""
    import torch

    from .infra.launch import world
    from .plan import format_plan, plan_from_config

    rank, size, _ = world()
    gpus = size if size > 1 and torch.cuda.is_available() else None
    p = plan_from_config(cfg, gpus=gpus)
    if rank == 0:
        print(format_plan(p), flush=True)
    if not p.fits:
        raise SftnbError(f"the memory plan above says run {cfg.run_name!r} does not fit here; change what it "
                         f"suggests (`sftnb plan {params.name} --gpus N --gpu-memory GB` tries other machines)")


def run_cli(args) -> int:
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    root = project_root()
    params = Path(args.params).expanduser()
    params = params if params.is_absolute() else (Path.cwd() / params)
    cfg = load_config(params)                         # validate everything before any work starts
    _check_memory_plan(cfg, params)
    out = Path(args.out).expanduser().resolve() if args.out else cfg.out_dir(root)
    run_override = {"out_dir": str(out)} if args.out else None
    figures = cfg.figures_dir(root)
    todo = notebooks(root, args.only)
    executed = out / "notebooks"
    executed.mkdir(parents=True, exist_ok=True)
    # --- several processes (torchrun / accelerate launch / srun): sftnb.infra.distributed -----------------------
    from .infra import distributed
    from . import work
    distributed.check_fsdp_launch(cfg)
    rank_cfg = load_config(params, {"run": run_override} if run_override else None)
    if distributed.world()[1] > 1 and not work.run_units(lambda: Experiment(rank_cfg, root)):
        return 0                                  # not rank 0: its share of the units is done, rank 0 finished
    # --- end distributed: rank 0 (or the only process) executes the notebooks -------------------------------
    print(f"sftnb run {cfg.run_name}: {len(todo)} notebook(s); store {out}; figures {figures}")
    figures.mkdir(parents=True, exist_ok=True)
    # the params as this run uses them (defaults filled in, paths absolute), before any notebook: no notebook's
    # artifact, so rewriting it never makes a notebook look out of date
    write_resolved(cfg.model_copy(update={"run": cfg.run.model_copy(
        update={"out_dir": str(out), "figures_dir": str(figures)})}), figures)
    _allocator_env()
    code = code_digest()
    total = time.perf_counter()
    for nb in todo:
        target = executed / nb.name
        tmp = temp_sibling(target, keep_suffix=True)
        parameters = {"params_file": str(params)}
        if run_override:
            parameters["run"] = run_override
        record = executed / f"{nb.stem}.done.json"
        fp = fingerprint(nb, params, parameters, code)
        kept = None if args.force else up_to_date(record, target, figures, fp)
        if kept is not None:
            print(f"  {nb.stem:<18} up to date (notebook, params, package unchanged; --force executes it)"
                  f"   -> {len(kept)} file(s) kept")
            continue
        record.unlink(missing_ok=True)
        since, t0 = time.time(), time.perf_counter()
        before = {p: p.stat().st_mtime for p in figures.glob("*")} if figures.is_dir() else {}
        try:
            pm.execute_notebook(str(nb), str(tmp), parameters=parameters, cwd=str(nb.parent),
                                kernel_name="python3", progress_bar={"desc": nb.stem, "leave": False},
                                log_output=False)
        except PapermillExecutionError as e:
            tmp.replace(target) if tmp.exists() else None
            evalue = str(e.evalue).splitlines()[0] if e.evalue else ""
            raise SftnbError(f"{nb.name} failed in cell {e.exec_count or e.cell_index}: {e.ename}: {evalue} "
                             f"(executed copy: {target})") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        tmp.replace(target)
        computed, reused = _log_events(out / "units.log.jsonl", since)
        written = sorted(p.name for p in figures.glob("*")
                         if p.is_file() and before.get(p) != p.stat().st_mtime)
        atomic_write_json(record, {"fingerprint": fp, "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
                                   "artifacts": {name: _stamp(figures / name) for name in written}})
        print(f"  {nb.stem:<18} {time.perf_counter() - t0:7.1f} s   units computed {computed:3d}, reused {reused:3d}"
              f"   -> {len(written)} file(s): {', '.join(written) if written else '(all up to date)'}")
    from .report import refresh_report
    from .sections import SECTIONS
    report = refresh_report(figures, SECTIONS)                  # as `sftnb report` writes it, from the CSVs of every notebook
    published = publish_notebooks(executed, figures / "notebooks", root)
    print(f"done in {time.perf_counter() - total:.1f} s; executed notebooks in {executed} (readable copies in "
          f"{published}); artifacts in {figures}" + (f"; report {report}" if report else ""))
    work.finish()                                 # several processes: release the ranks waiting for rank 0
    return 0
