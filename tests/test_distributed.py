"""Many processes, one store: claims (sftnb.infra.locks), work sharing and the runner hook (sftnb.infra.distributed), FSDP SFT
(sftnb.fsdp). Multi-process tests start real processes (subprocess, torchrun with the gloo backend) on the CPU."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from sftnb.infra import locks as claims, distributed
from sftnb.config import load_config, validate
from sftnb.infra.errors import SftnbError
from sftnb.infra.store import Store

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).parent / "torchrun"
TIMING = {"_seconds", "seconds", "samples_per_s"}          # result fields that measure time, not results

# A stand-in work list: stages of store units that sleep a little and write a number. A unit of stage s > 0
# checks that every unit of stage s - 1 is finished (the barrier between stages). Every computation appends
# "<stage> <unit> <tag> <pid>" to <root>/computed.txt, so tests can count who computed what.
STANDIN = '''
import os, time
from pathlib import Path


def unit(store, stage, i, n, sleep, tag, hang=None):
    def fn(tmp):
        if stage and not all(store.unit("num", {"stage": stage - 1, "i": j}, f"s{stage - 1}-u{j}").done
                             for j in range(n)):
            raise RuntimeError(f"stage {stage} unit {i} started before stage {stage - 1} was finished")
        if hang == (stage, i):
            print("READY", flush=True)
            time.sleep(120)
        time.sleep(sleep)
        (tmp / "value.txt").write_text(str(i * i))
        with open(store.root / "computed.txt", "a") as fh:
            fh.write(f"{stage} {i} {tag} {os.getpid()}\\n")
        return {"value": i * i + stage}
    return lambda: store.compute("num", {"stage": stage, "i": i}, fn, label=f"s{stage}-u{i}")


def work(store, n=10, stages=1, sleep=0.2, tag="", hang=None):
    return [[unit(store, s, i, n, sleep, tag, hang) for i in range(n)] for s in range(stages)]
'''


def _env(tmp_path: Path, **extra) -> dict:
    env = dict(os.environ)
    for var in distributed.LAUNCH_VARS + ("MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    # CPU tests stay on the CPU (gloo) also on a GPU machine; the CUDA FSDP test passes its GPUs back in
    env.update(PYTHONPATH=f"{ROOT}{os.pathsep}{tmp_path}", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    env.update(extra)
    return env


# Ranks share one stdout pipe, where their lines can interleave; each rank appends its JSON lines to its own file.
REPORTS = """
import json, os
def write_report(rank, obj):
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), f"report-rank{rank}.jsonl"), "a") as f:
        f.write(json.dumps(obj) + "\\n")
"""


def _reports(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for path in sorted(tmp_path.glob("report-rank*.jsonl"))
            for line in path.read_text().splitlines()]


def _script(tmp_path: Path, name: str, body: str) -> Path:
    (tmp_path / "standin.py").write_text(STANDIN)
    (tmp_path / "reports.py").write_text(REPORTS)
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def _python(tmp_path: Path, script: Path, *args, **env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(script), *map(str, args)], env=_env(tmp_path, **env),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _torchrun(tmp_path: Path, script: Path, *args, nproc: int = 2, timeout: float = 120,
              cwd: Path | None = None, **env) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", str(nproc), str(script), *map(str, args)],
                          env=_env(tmp_path, **env), capture_output=True, text=True, timeout=timeout,
                          cwd=cwd or tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _computed(store_root: Path) -> list[tuple[int, int, str]]:
    path = store_root / "computed.txt"
    lines = path.read_text().split("\n") if path.exists() else []
    return [(int(s), int(i), tag) for s, i, tag, _ in (line.split() for line in lines if line)]


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def _write_claim(store: Store, kind: str, spec: dict, **info) -> Path:
    path = claims.claim_path(store.unit(kind, spec).path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "rank": 0, "nonce": "x"} | info))
    return path


def snapshot(root: Path) -> dict:
    """Every finished unit of a store: its files and its result without timing fields."""
    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in TIMING}
        return [strip(v) for v in x] if isinstance(x, list) else x

    out = {}
    for res in sorted(root.glob("*/*/result.json")):
        unit = res.parent
        out[f"{unit.parent.name}/{unit.name}"] = {
            "files": sorted(p.name for p in unit.iterdir()),
            "result": strip(json.loads(res.read_text())),
        }
    return out


# ------------------------------------------------------------------------------------------ claims
SAME_UNIT = """
import json, os, sys, time
from pathlib import Path
from sftnb.infra.store import Store
root, start = Path(sys.argv[1]), float(sys.argv[2])
store = Store(root)
time.sleep(max(0.0, start - time.time()))                    # both processes ask at the same moment
def fn(tmp):
    with open(root / "calls.txt", "a") as fh:
        fh.write(f"{os.getpid()}\\n")
    time.sleep(1.0)
    return {"who": os.getpid()}
print(json.dumps(store.compute("sft", {"i": 0}, fn)))
"""


@pytest.mark.slow
def test_two_processes_computing_one_unit_compute_it_once(tmp_path):
    script = _script(tmp_path, "same_unit.py", SAME_UNIT)
    start = time.time() + 3
    procs = [_python(tmp_path, script, tmp_path / "store", start) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    results = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    calls = (tmp_path / "store" / "calls.txt").read_text().split()
    assert len(calls) == 1                                         # computed exactly once ...
    assert results[0] == results[1] and results[0]["who"] == int(calls[0])   # ... and both got that result
    assert not list((tmp_path / "store" / "sft").glob(".*"))      # no claim or temporary folder left


def test_claim_of_a_dead_pid_is_retaken(tmp_path):
    store = Store(tmp_path)
    path = _write_claim(store, "sft", {"i": 0}, pid=_dead_pid())
    calls = []
    t0 = time.perf_counter()
    assert store.compute("sft", {"i": 0}, lambda tmp: calls.append(1) or {"ok": 1})["ok"] == 1
    assert calls == [1] and time.perf_counter() - t0 < 5          # at once: no stale_s wait for a dead pid
    assert not path.exists()
    # and a dead claimer's claim is removed by the next Store() too
    path = _write_claim(store, "sft", {"i": 1}, pid=_dead_pid())
    Store(tmp_path)
    assert not path.exists()


def test_claim_with_a_stale_mtime_is_retaken_and_a_live_one_is_not(tmp_path):
    store = Store(tmp_path)
    # another host's claim: its pid cannot be checked, only its heartbeat (mtime)
    path = _write_claim(store, "sft", {"i": 0}, host="elsewhere", pid=1)
    with claims.no_wait(), pytest.raises(claims.Busy, match="elsewhere pid 1"):
        store.compute("sft", {"i": 0}, lambda tmp: {"ok": 1})     # live: not taken
    assert path.exists() and not store.unit("sft", {"i": 0}).done
    old = time.time() - claims.STALE_S - 60
    os.utime(path, (old, old))                                      # no heartbeat for more than stale_s
    assert claims.stale_reason(path).startswith("no heartbeat")
    assert store.compute("sft", {"i": 0}, lambda tmp: {"ok": 2})["ok"] == 2
    assert not path.exists()


def test_breaking_a_stale_claim_lets_exactly_one_waiter_take_it(tmp_path, monkeypatch):
    store = Store(tmp_path)
    unit = store.unit("sft", {"i": 0})
    path = _write_claim(store, "sft", {"i": 0}, pid=_dead_pid())
    assert claims.break_stale(path) and not path.exists()          # broken by a rename, then unlinked
    assert not claims.break_stale(path)                             # nothing left to break
    first, second = claims.try_claim(path), claims.try_claim(path.with_name(path.name))
    try:
        assert first is not None and second.reentrant              # one real claim (the same process: nested)
        assert not claims.break_stale(path)                         # a live claim is never broken
        assert claims.claim_or_wait(unit).reentrant
    finally:
        first.release()
    assert not path.exists()
    # a claim judged stale but replaced by a fresh one before the rename is put back, not removed
    _write_claim(store, "sft", {"i": 0}, pid=_dead_pid(), nonce="old")

    def judged_then_replaced(p, *a):
        p.write_text(json.dumps({"host": "elsewhere", "pid": 1, "nonce": "new"}))
        return "dead (judged a moment ago)"

    monkeypatch.setattr(claims, "stale_reason", judged_then_replaced)
    assert claims.break_stale(path)
    assert json.loads(path.read_text())["nonce"] == "new"
    # two waiters judged the same claim stale: the second one's rename finds nothing (the first won)
    path.unlink()
    monkeypatch.setattr(claims, "stale_reason", lambda p, *a: "judged stale before the other waiter broke it")
    assert claims.break_stale(path) and not path.exists()
    assert [p.name for p in path.parent.iterdir() if ".stale-" in p.name] == []


def test_heartbeat_keeps_a_long_unit_claimed(tmp_path, monkeypatch):
    store = Store(tmp_path)
    path = claims.claim_path(store.unit("sft", {"i": 0}).path)
    seen = []

    def fn(tmp):
        first = path.stat().st_mtime
        time.sleep(0.5)
        seen.append((first, path.stat().st_mtime, json.loads(path.read_text())))
        return {"ok": 1}

    monkeypatch.setattr(claims, "HEARTBEAT_S", 0.1)
    store.compute("sft", {"i": 0}, fn)
    first, later, info = seen[0]
    assert later > first                                            # the mtime was refreshed while computing
    assert info["pid"] == os.getpid() and info["host"] == socket.gethostname() and info["heartbeat_s"] == 0.1
    assert not path.exists()                                        # released after publication


def test_claim_is_released_when_the_unit_raises(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(ZeroDivisionError):
        store.compute("sft", {"i": 0}, lambda tmp: {"v": 1 / 0})
    assert not list((tmp_path / "sft").glob(".*"))
    assert store.compute("sft", {"i": 0}, lambda tmp: {"v": 1})["v"] == 1


SLOW_UNIT = """
import sys, time
from sftnb.infra.store import Store
store = Store(sys.argv[1])
def fn(tmp):
    print("READY", flush=True)
    time.sleep(3)
    return {"who": "other"}
store.compute("sft", {"i": 0}, fn)
"""


@pytest.mark.slow
def test_a_unit_computed_by_another_process_is_waited_for(tmp_path):
    proc = _python(tmp_path, _script(tmp_path, "slow_unit.py", SLOW_UNIT), tmp_path)
    assert proc.stdout.readline().strip() == "READY", proc.stderr.read()
    store = Store(tmp_path)                                          # spares the live claimer's temp folder
    calls = []
    t0 = time.perf_counter()
    result = store.compute("sft", {"i": 0}, lambda tmp: calls.append(1) or {"who": "me"})
    assert proc.wait(timeout=30) == 0
    assert result["who"] == "other" and calls == [] and time.perf_counter() - t0 > 1
    assert store.reused and not store.computed


def test_exclusive_create_self_test(tmp_path, monkeypatch):
    assert claims.check_exclusive_create(tmp_path)
    real_open = os.open

    def no_excl(path, flags, mode=0o777):                             # a filesystem that ignores O_EXCL
        return real_open(path, flags & ~os.O_EXCL, mode)

    monkeypatch.setattr(claims.os, "open", no_excl)
    with pytest.warns(RuntimeWarning, match="exclusive file creation"):
        Store(tmp_path / "single")                                    # one process: a warning
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(SftnbError, match=r"put run.out_dir \(or --out\) on a local or NFSv3\+ filesystem") as e:
        Store(tmp_path / "multi")                                     # several: refused, one line
    assert "\n" not in str(e.value) and str(tmp_path / "multi") in str(e.value)


# ------------------------------------------------------------------------------------------ kill -9, rerun
KILLED_RUN = """
import sys
from sftnb.infra.distributed import compute_all
from sftnb.infra.store import Store
import standin
store = Store(sys.argv[1])
hang = (0, int(sys.argv[2])) if len(sys.argv) > 2 else None
compute_all(standin.work(store, n=6, sleep=0.05, tag=sys.argv[3] if len(sys.argv) > 3 else "x", hang=hang))
print("DONE", flush=True)
"""


@pytest.mark.slow
def test_kill_minus_9_mid_unit_then_rerun_completes_without_recomputing(tmp_path):
    script = _script(tmp_path, "killed_run.py", KILLED_RUN)
    store_root = tmp_path / "store"
    proc = _python(tmp_path, script, store_root, 3, "first")
    assert proc.stdout.readline().strip() == "READY", proc.stderr.read()
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL
    assert sorted(i for _, i, _ in _computed(store_root)) == [0, 1, 2]       # finished before the kill
    held = list((store_root / "num").glob(".*.claim"))                          # the killed unit's claim
    assert len(held) == 1 and json.loads(held[0].read_text())["pid"] == proc.pid

    rerun = _python(tmp_path, script, store_root, -1, "second")                # (no unit hangs this time)
    out, err = rerun.communicate(timeout=60)
    assert rerun.returncode == 0 and "DONE" in out, err
    done = _computed(store_root)
    assert sorted(i for _, i, _ in done) == list(range(6))                      # each unit computed once
    assert {i for _, i, tag in done if tag == "second"} == {3, 4, 5}           # the rerun did only the rest
    assert not list((store_root / "num").glob(".*"))                            # no claim, no temp folder left


# ------------------------------------------------------------------------------------------ sharing out
INDEPENDENT = """
import sys, time
from sftnb.infra.distributed import compute_all
from sftnb.infra.store import Store
import standin
store = Store(sys.argv[1])
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
compute_all(standin.work(store, n=10, sleep=0.3, tag=sys.argv[3]))
print("DONE", len(store.computed), flush=True)
"""


@pytest.mark.slow
def test_two_independent_processes_share_one_work_list(tmp_path):
    script = _script(tmp_path, "independent.py", INDEPENDENT)
    start = time.time() + 3
    procs = [_python(tmp_path, script, tmp_path / "store", start, tag) for tag in ("a", "b")]
    outs = [p.communicate(timeout=90) for p in procs]
    assert all(p.returncode == 0 and "DONE" in o for p, (o, _) in zip(procs, outs)), outs
    done = _computed(tmp_path / "store")
    assert sorted(i for _, i, _ in done) == list(range(10))                   # every unit computed once
    per = {tag: sum(t == tag for _, _, t in done) for tag in ("a", "b")}
    assert per["a"] >= 2 and per["b"] >= 2, per                                # ... and shared out
    log = [json.loads(x) for x in (tmp_path / "store" / "units.log.jsonl").read_text().splitlines()]
    assert sum(e["event"] == "computed" for e in log) == 10


def test_share_order_is_rank_strided_then_the_rest():
    assert distributed.share_order(7, 0, 2) == [0, 2, 4, 6, 5, 3, 1]
    assert distributed.share_order(7, 1, 3) == [1, 4, 5, 2, 6, 3, 0]
    assert distributed.share_order(3, 0, 1) == [0, 1, 2]
    assert all(sorted(distributed.share_order(10, r, 4)) == list(range(10)) for r in range(4))


TORCHRUN_STAGES = """
import json, sys
from sftnb.infra import distributed
from sftnb.infra.store import Store
import standin
from reports import write_report
rank, size, _ = distributed.init()
store = Store(sys.argv[1])
stats = distributed.compute_all(standin.work(store, n=8, stages=2, sleep=0.3, tag=f"rank{rank}"))
write_report(rank, {"rank": rank, "size": size, **stats})
distributed.shutdown()
"""


@pytest.mark.slow
def test_torchrun_compute_all_in_stages_shares_units_evenly(tmp_path):
    script = _script(tmp_path, "stages.py", TORCHRUN_STAGES)
    _torchrun(tmp_path, script, tmp_path / "store")
    stats = _reports(tmp_path)
    assert sorted(s["rank"] for s in stats) == [0, 1] and all(s["size"] == 2 and s["stages"] == 2 for s in stats)
    done = _computed(tmp_path / "store")
    assert sorted((s, i) for s, i, _ in done) == [(s, i) for s in range(2) for i in range(8)]   # each once
    for stage in range(2):
        per = [sum(s == stage and t == f"rank{r}" for s, _, t in done) for r in range(2)]
        assert abs(per[0] - per[1]) <= 1, (stage, per)                       # evenly shared, stage by stage
    # the store equals a single process's
    single = tmp_path / "single"
    standin = {}
    exec(STANDIN, standin)
    distributed.compute_all(standin["work"](Store(single), n=8, stages=2, sleep=0.0, tag="one"))
    assert snapshot(tmp_path / "store") == snapshot(single) and len(snapshot(single)) == 16


def test_world_from_torchrun_accelerate_or_srun(monkeypatch):
    for var in distributed.LAUNCH_VARS + ("SLURM_NTASKS",):
        monkeypatch.delenv(var, raising=False)
    assert distributed.world() == (0, 1, 0)
    monkeypatch.setenv("SLURM_NTASKS", "8")                   # inside an sbatch script: still one process
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert distributed.world() == (0, 1, 0)
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "8")           # a task of `srun` (8 tasks)
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    assert distributed.world() == (5, 8, 1)
    monkeypatch.setenv("WORLD_SIZE", "16")                     # torchrun / accelerate (also under srun) win
    monkeypatch.setenv("RANK", "9")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.world() == (9, 16, 1) and not distributed.is_main()


def test_ranks_per_host_under_torchrun_or_srun_alone(monkeypatch):
    """Several ranks on one GPU must coordinate over gloo (NCCL refuses them). torchrun says how many ranks a host
    has (LOCAL_WORLD_SIZE); ``srun`` alone does not, so SLURM's tasks per node count: without them, 8 srun tasks on
    a 4-GPU node would start NCCL and fail at the first FSDP collective."""
    for var in distributed.LAUNCH_VARS:
        monkeypatch.delenv(var, raising=False)
    assert distributed.local_world_size() == 1 and not distributed.shares_devices(4)
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "8")
    assert distributed.local_world_size() == 8 and distributed.shares_devices(4)
    monkeypatch.setenv("SLURM_STEP_TASKS_PER_NODE", "4(x2),3")             # the step's own layout wins
    assert distributed.local_world_size() == 4 and not distributed.shares_devices(4)
    monkeypatch.setenv("SLURM_NODEID", "2")
    assert distributed.local_world_size() == 3 and distributed.shares_devices(2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")                            # torchrun (also under srun) wins
    assert distributed.local_world_size() == 2 and not distributed.shares_devices(2)


def test_a_quantized_model_loads_on_the_gpu_of_its_rank(tiny_model_dir, monkeypatch):
    """``run.device: cuda`` has no index; each rank has been given its GPU (``torch.cuda.set_device`` in
    ``distributed.init``). A 4/8-bit model is placed by bitsandbytes' ``device_map``, which took ``index or 0``:
    every rank's model on GPU 0. Checked by reading the arguments the loader gets (no GPU here)."""
    import torch
    import transformers

    from sftnb.infra.errors import SftnbError
    from sftnb.lm import models
    seen = {}

    def capture(folder, **kw):
        seen.update(kw)
        raise OSError("stop before loading")
    monkeypatch.setattr(models, "resolve_device", lambda d: torch.device(d))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)                # this rank's GPU
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", capture)
    for device, gpu in (("cuda", 3), ("cuda:1", 1)):
        with pytest.raises(SftnbError, match="could not load"):
            models.load_model(str(tiny_model_dir), device=device, dtype="bfloat16", quantization="8bit")
        assert seen["device_map"] == {"": gpu}


@pytest.mark.slow
def test_srun_style_processes_share_units(tmp_path):
    """``srun python -m sftnb ...`` without torchrun: ranks from SLURM_*, rendezvous at MASTER_ADDR:MASTER_PORT."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = _script(tmp_path, "stages.py", TORCHRUN_STAGES)
    procs = [_python(tmp_path, script, tmp_path / "store", SLURM_PROCID=str(r), SLURM_LOCALID=str(r),
                     SLURM_STEP_NUM_TASKS="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)) for r in range(2)]
    outs = [p.communicate(timeout=90) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    stats = _reports(tmp_path)
    assert sorted((s["rank"], s["size"]) for s in stats) == [(0, 2), (1, 2)]
    done = _computed(tmp_path / "store")
    assert sorted((s, i) for s, i, _ in done) == [(s, i) for s in range(2) for i in range(8)]
    assert {t for _, _, t in done} == {"rank0", "rank1"}
    # without MASTER_ADDR, one line says what to export
    lone = _python(tmp_path, script, tmp_path / "other", SLURM_PROCID="0", SLURM_STEP_NUM_TASKS="2")
    _, err = lone.communicate(timeout=60)
    assert lone.returncode != 0 and "MASTER_ADDR / MASTER_PORT are not set" in err


@pytest.mark.slow
def test_accelerate_launch_shares_units_too(tmp_path):
    """``accelerate launch --multi_gpu`` runs torchrun underneath: the same variables, the same sharing."""
    script = _script(tmp_path, "stages.py", TORCHRUN_STAGES)
    proc = subprocess.run([str(TORCHRUN.parent / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script),
                           str(tmp_path / "store")], env=_env(tmp_path), capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = _reports(tmp_path)
    assert sorted((s["rank"], s["size"]) for s in stats) == [(0, 2), (1, 2)]
    done = _computed(tmp_path / "store")
    assert sorted((s, i) for s, i, _ in done) == [(s, i) for s in range(2) for i in range(8)]
    assert {t for _, _, t in done} == {"rank0", "rank1"}


# ------------------------------------------------------------------------------------------ FSDP
FSDP = """
import json, sys
import torch
from sftnb.infra import distributed
from sftnb.config import SFTConfig
from torch.distributed.fsdp import MixedPrecisionPolicy
from sftnb.fsdp import mixed_precision, sharded_from_rank0, train_fsdp
from sftnb.lm.models import tiny_model
from sftnb.infra.store import Store
import pairs_of
from reports import write_report
rank, size, _ = distributed.init()
store = Store(sys.argv[1])
cfg = SFTConfig(**json.loads(sys.argv[2]))
unit = store.unit("sft", {"test": "fsdp"}, "fsdp")
def fn(tmp):                                              # every rank trains; rank 0 (tmp set) writes the unit
    # the weights come from rank 0 only: rank 1 builds a model of other weights and passes none of them
    template, tok = tiny_model(seed=0 if rank == 0 else 1)
    model = sharded_from_rank0(template.config, template.state_dict() if rank == 0 else None,
                               mp_policy=mixed_precision(cfg.precision, torch.device("cpu")))
    assert model._get_fsdp_state()._mp_policy == MixedPrecisionPolicy()     # fp32 on the CPU: no casts
    report, state = train_fsdp(model, tok, pairs_of.PAIRS, cfg, seed=3, progress=False)
    if tmp is None:
        assert state == {}
        return {}
    torch.save(state, tmp / "state.pt")
    return {"losses": report.losses, "steps": report.steps, "rank": rank}
for _ in range(2):                                        # the second time every rank reuses it
    with distributed.lockstep():                          # every rank calls it together (a Collective stage)
        result = distributed.compute_collective(unit, fn)
    write_report(rank, {"rank": rank, "result": result, "computed": len(store.computed)})
distributed.shutdown()
"""
# answers of 2 to 5+ tokens: ranks hold different numbers of answer tokens, so a per-rank mean would differ
PAIRS = [(f"Which country is city {i} located in?", f"{'New ' * (i % 4)}Country {i}") for i in range(11)]


def _cuda_devices() -> int:
    import torch
    return torch.cuda.device_count()


@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    _cuda_devices() < 2, reason="FSDP over NCCL needs 2 GPUs (one rank per GPU)"))])
def test_fsdp_training_matches_a_single_process(tmp_path, device):
    """2 ranks x FSDP2 vs one process, fp32: 3 epochs of 11 pairs in batches of 4, the last of 1 (rank 1 has
    nothing in it), with warm-up, cosine decay and gradient clipping. On CPU: gloo; with 2 GPUs: NCCL."""
    import torch

    from sftnb.config import SFTConfig
    from sftnb.lm.models import tiny_model
    from sftnb.sft import train

    (tmp_path / "pairs_of.py").write_text(f"PAIRS = {PAIRS!r}\n")
    sft = {"learning_rate": 1e-3, "batch_size": 4, "epochs": 3, "precision": "fp32", "max_grad_norm": 1.0,
           "warmup_ratio": 0.2}
    gpus = {} if device == "cpu" else {"CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", "0,1")}
    _torchrun(tmp_path, _script(tmp_path, "fsdp.py", FSDP), tmp_path / "store", json.dumps(sft), **gpus)
    lines = _reports(tmp_path)
    assert len(lines) == 4
    first = [x for x in lines if x["result"].get("steps")]
    assert len(first) == 4 and all(x["result"] == lines[0]["result"] for x in lines)   # every rank gets it
    assert lines[0]["result"]["rank"] == 0                                        # rank 0 published it ...
    assert max(x["computed"] for x in lines if x["rank"] == 0) == 1               # ... once; then reused
    assert all(x["computed"] == 0 for x in lines if x["rank"] == 1)
    state = torch.load(next((tmp_path / "store" / "sft").glob("fsdp-*")) / "state.pt")

    model, tok = tiny_model(seed=0)
    report = train(model.to(device), tok, PAIRS, SFTConfig(**sft), seed=3, progress=False)
    model.cpu()
    fsdp_losses = lines[0]["result"]["losses"]
    assert len(fsdp_losses) == report.steps == 9
    assert max(abs(a - b) for a, b in zip(fsdp_losses, report.losses)) < 1e-4
    reference = model.state_dict()
    assert set(state) == set(reference)
    base = tiny_model(seed=0)[0].state_dict()
    moved = max(float((reference[k] - base[k]).abs().max()) for k in reference)
    assert moved > 1e-3                                           # training moved the weights: not a vacuous test
    # Both runs sum the same per-token losses in a different order (per rank, then all-reduced), so gradients
    # differ by float32 rounding (~1e-7 relative) and Adam turns that into weight differences of the same order:
    # measured 1.2e-7 at most after 9 steps, while the weights moved by up to 4.5e-3 (lr 1e-3 per step). The
    # tolerance |d| <= 1e-6 + 1e-5 |w| sits ~10x above that rounding and ~1000x below one optimizer step; a
    # per-rank loss mean (the usual DDP/FSDP mistake) misses it by 6e-3 and the losses by 1e-2.
    for k, v in reference.items():
        torch.testing.assert_close(state[k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_fsdp_mixed_precision_policy_not_autocast():
    """Issue 23: FSDP2 casts through MixedPrecisionPolicy (bf16 compute and all-gathers, fp32 gradient reduction
    into fp32 shards) on a GPU; a float32 run (a CPU's ``auto``) stays float32; fsdp.py never autocasts."""
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from sftnb import fsdp

    gpu = fsdp.mixed_precision("auto", torch.device("cuda", 0))
    assert (gpu.param_dtype, gpu.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert fsdp.mixed_precision("bf16-mixed", torch.device("cpu")) == gpu
    assert fsdp.mixed_precision("auto", torch.device("cpu")) == MixedPrecisionPolicy()
    assert fsdp.mixed_precision("fp32", torch.device("cuda", 0)) == MixedPrecisionPolicy()
    assert "autocast" not in (ROOT / "sftnb" / "fsdp.py").read_text().split('"""', 2)[2].replace(
        "no autocast", "")


def test_fsdp_with_one_process_is_refused(tmp_path, monkeypatch, capsys):
    cfg = validate({"sft": {"strategy": "fsdp"}})
    with pytest.raises(SftnbError, match="^sft.strategy fsdp needs several processes: launch with torchrun "
                                         "--nproc_per_node N$"):
        distributed.check_fsdp_launch(cfg)
    distributed.check_fsdp_launch(validate({}))                               # single: fine
    monkeypatch.setenv("WORLD_SIZE", "2")
    distributed.check_fsdp_launch(cfg)                                         # several processes: fine
    monkeypatch.delenv("WORLD_SIZE")
    # `sftnb run` refuses it before any notebook runs, in one line
    import sftnb.runner as runner
    from sftnb.cli import main
    from test_runner import make_project

    root = make_project(tmp_path, "raise RuntimeError('must not run')")
    text = (root / "params" / "smoke.yaml").read_text().replace("  batch_size: 4\n",
                                                                  "  batch_size: 4\n  strategy: fsdp\n")
    (root / "params" / "smoke.yaml").write_text(text)
    assert load_config(root / "params" / "smoke.yaml").sft.strategy == "fsdp"
    monkeypatch.chdir(root)
    monkeypatch.setattr(runner, "project_root", lambda: root)
    assert main(["run", "params/smoke.yaml"]) == 2
    err = capsys.readouterr().err
    assert err == "sftnb: error: sft.strategy fsdp needs several processes: launch with torchrun --nproc_per_node N\n"
    # and train_fsdp itself, outside torch.distributed
    from sftnb.fsdp import train_fsdp
    with pytest.raises(SftnbError, match="needs several processes"):
        train_fsdp(None, None, PAIRS, cfg.sft)


# ------------------------------------------------------------------------------------------ sftnb run
RUN_STANDIN = """
import sys
from pathlib import Path
import sftnb.runner as runner
from sftnb.cli import main
from sftnb.experiment import Experiment
import standin
root = Path(sys.argv[1])
runner.project_root = lambda: root
Experiment.work = lambda self: [standin.work(self.store, n=6, stages=2, sleep=0.3, tag=f"{mc.name}")
                                for mc in self.cfg.models]
sys.exit(main(["run", "params/smoke.yaml"]))
"""
NOTEBOOK = """import json, os, pathlib
from sftnb.infra.store import Store
out = pathlib.Path(params_file).parents[1]
units = sorted(u["spec"]["i"] + 10 * u["spec"]["stage"] for u in Store(out / "runs" / "smoke").units("num"))
with open(out / "notebook_runs.txt", "a") as fh:
    fh.write(json.dumps({"rank": os.environ.get("RANK"), "world": os.environ.get("WORLD_SIZE"), "units": units}) + "\\n")"""


@pytest.mark.slow
def test_sftnb_run_under_torchrun_shares_units_and_rank0_runs_the_notebooks(tmp_path):
    """The runner hook with a stand-in ``Experiment.work``: both ranks compute units, rank 0 alone executes the
    notebook (as a single process: no launcher variables in its kernel), both exit 0."""
    from test_runner import make_project

    (tmp_path / "project").mkdir()
    root = make_project(tmp_path / "project", NOTEBOOK)
    script = _script(tmp_path, "run_standin.py", RUN_STANDIN)
    proc = _torchrun(tmp_path, script, root, timeout=180, cwd=root)
    runs = [json.loads(x) for x in (root / "notebook_runs.txt").read_text().splitlines()]
    assert runs == [{"rank": None, "world": None, "units": list(range(6)) + list(range(10, 16))}]
    done = _computed(root / "runs" / "smoke")
    assert sorted((s, i) for s, i, _ in done) == [(s, i) for s in range(2) for i in range(6)]
    pids = {line.split()[3] for line in (root / "runs" / "smoke" / "computed.txt").read_text().splitlines()}
    assert len(pids) == 2                                                     # both ranks computed units
    assert "2 processes share the run's units" in proc.stdout and "01_demo" in proc.stdout


@pytest.mark.slow
def test_sftnb_run_smoke_under_torchrun_equals_one_process(tmp_path):
    """The whole smoke run, 2 ranks vs 1 process: same unit keys, same results (modulo timing fields)."""
    import shutil

    projects = []
    for name in ("one", "two"):                   # copies: the runs write figures/ and runs/ beside params/
        project = tmp_path / name
        for sub in ("params", "notebooks"):
            shutil.copytree(ROOT / sub, project / sub)
        shutil.copy(ROOT / "pyproject.toml", project)
        projects.append(project)
    env = _env(tmp_path)
    single = subprocess.run([sys.executable, "-m", "sftnb", "run", "params/smoke.yaml"], cwd=projects[0], env=env,
                            capture_output=True, text=True, timeout=900)
    assert single.returncode == 0, single.stderr[-3000:]
    multi = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", "-m", "sftnb", "run",
                            "params/smoke.yaml"], cwd=projects[1], env=env, capture_output=True, text=True,
                           timeout=900)
    assert multi.returncode == 0, multi.stderr[-3000:]
    a, b = (snapshot(p / "runs" / "smoke") for p in projects)
    assert sorted(a) == sorted(b) and a == b


RUN_PER_RANK_HOME = """
import os, sys
from pathlib import Path
os.environ["HOME"] = f"{sys.argv[2]}{os.environ['LOCAL_RANK']}"      # each rank its own home: ~ differs
import sftnb.runner as runner
from sftnb.cli import main
root = Path(sys.argv[1])
runner.project_root = lambda: root
os.chdir(root)
sys.exit(main(["run", "params/smoke.yaml"]))
"""


@pytest.mark.slow
def test_a_rank_that_cannot_read_the_model_folder_stops_the_run_with_one_line_and_nothing_written(tmp_path):
    """The model is ``~/tiny``; rank 0's home has it, rank 1's does not (as on a node without the shared disk).
    Rank 1 says so in one line naming itself, the launch fails, and no unit is computed, claimed or half-written."""
    from sftnb.lm.models import save_tiny_model
    from test_runner import make_project

    (tmp_path / "project").mkdir()
    root = make_project(tmp_path / "project", "raise RuntimeError('the notebooks must not run')")
    params = root / "params" / "smoke.yaml"
    params.write_text(params.read_text().replace("path: tiny-random", "path: ~/tiny"))
    save_tiny_model(tmp_path / "home0" / "tiny", seed=0)
    (tmp_path / "home1").mkdir()
    script = _script(tmp_path, "run_per_rank_home.py", RUN_PER_RANK_HOME)
    proc = subprocess.run([str(TORCHRUN), "--standalone", "--nproc_per_node", "2", str(script), root,
                           tmp_path / "home"], env=_env(tmp_path), capture_output=True, text=True, timeout=180,
                          cwd=root)
    assert proc.returncode != 0
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("sftnb: error:")]
    assert len(ours) == 1, proc.stderr[-3000:]
    assert ours[0].startswith("sftnb: error: [rank 1 of 2 on ") and f"{tmp_path}/home1/tiny" in ours[0], ours
    assert "Traceback" not in proc.stdout + "\n".join(l for l in proc.stderr.splitlines() if "sftnb" in l)
    store = root / "runs" / "smoke"
    assert not store.exists() or not [p for p in store.rglob("*") if p.is_file()]


# ------------------------------------------------------------------------------------------ unit-level sharing
WORK = """
import json, sys
from pathlib import Path
from sftnb.infra import distributed
from sftnb.config import load_config
from sftnb.experiment import Experiment
root = Path(sys.argv[1])
extra = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
rank, size, _ = distributed.init()
cfg = load_config(root / "params" / "smoke.yaml", {"probe": {"chunk_facts": 8}, "run": {"progress": False}, **extra})
exp = Experiment(cfg, root)
for stages in exp.work():
    distributed.compute_all(stages)
distributed.shutdown()
"""


def _one_process_run_and_a_copy(tmp_path, name):
    """Two copies of the project's params (one, ``name``), the work script, and the one-process run done in the
    first: what a multi-rank run in the second is compared with."""
    import shutil

    roots = []
    for sub in ("one", name):
        project = tmp_path / sub
        shutil.copytree(ROOT / "params", project / "params")
        roots.append(project)
    script = _script(tmp_path, "work.py", WORK)
    single = subprocess.run([sys.executable, str(script), roots[0]], env=_env(tmp_path), capture_output=True,
                            text=True, timeout=900)
    assert single.returncode == 0, single.stderr[-3000:]
    return roots, script


@pytest.mark.slow
def test_four_ranks_share_the_smoke_run_unit_by_unit_and_equal_one_process(tmp_path):
    """Issue 23's acceptance: ``Experiment.work`` of params/smoke.yaml with ``probe.chunk_facts: 8`` under
    ``torchrun --nproc_per_node 4`` (gloo): every computed unit in units.log.jsonl names its rank and host; at
    least 3 of the 4 ranks compute probe chunks, at least 3 compute SFT runs or evaluations (restoration sweeps
    evaluate); the stored results equal a one-process run's."""
    roots, script = _one_process_run_and_a_copy(tmp_path, "four")
    _torchrun(tmp_path, script, roots[1], nproc=4, timeout=900)
    store = roots[1] / "runs" / "smoke"
    log = [json.loads(x) for x in (store / "units.log.jsonl").read_text().splitlines()]
    computed = [e for e in log if e["event"] == "computed"]
    assert computed and all(e["rank"] in range(4) and e["host"] == socket.gethostname() for e in computed)
    by_kind = {}
    for e in computed:
        by_kind.setdefault(e["kind"], set()).add(e["rank"])
    assert len({e["unit"] for e in computed}) == len(computed)                  # each unit computed once
    assert len(by_kind["probe"]) >= 3, by_kind
    evaluating = by_kind.get("sft", set()) | by_kind.get("restore", set()) | by_kind.get("layer_restore", set())
    assert len(evaluating) >= 3, by_kind
    a, b = (snapshot(p / "runs" / "smoke") for p in roots)
    assert sorted(a) == sorted(b) and a == b


@pytest.mark.slow
def test_fsdp_runs_train_in_groups_of_ranks_at_once(tmp_path):
    """Issue 23: with ``sft.strategy: fsdp`` and ``sft.fsdp_ranks: 2`` under 4 ranks, the sharded runs train on
    two groups of 2 ranks (a DeviceMesh each) at the same time, each run computed once by one group, whose leader
    (rank 0 or 2) publishes it; the LoRA runs and everything else are shared by rank. The results equal a
    one-process run's: the same accuracies, losses within float32 rounding."""
    roots, script = _one_process_run_and_a_copy(tmp_path, "groups")
    _torchrun(tmp_path, script, roots[1], json.dumps({"sft": {"strategy": "fsdp", "fsdp_ranks": 2}}), nproc=4,
              timeout=900)
    log = [json.loads(x) for x in (roots[1] / "runs" / "smoke" / "units.log.jsonl").read_text().splitlines()]
    sharded = [e for e in log if e["event"] == "computed" and e["kind"] == "sft" and not e["unit"].startswith("lora")]
    assert {e["rank"] for e in sharded} == {0, 2}, sharded                    # both group leaders published runs
    assert len({e["unit"] for e in sharded}) == len(sharded)
    # the two groups trained at the same time: some run of one group started before the other's first ended
    spans = {}
    for e in sharded:
        res = json.loads((roots[1] / "runs" / "smoke" / "sft" / e["unit"] / "result.json").read_text())
        spans.setdefault(e["rank"], []).append((e["t"] - res["_seconds"], e["t"]))
    (a0, a1), (b0, b1) = min(spans[0]), min(spans[2])
    assert a0 < b1 and b0 < a1, spans
    one, groups = (Store(p / "runs" / "smoke").units("sft") for p in roots)
    by_label = lambda units: {u["path"].name: u["result"] for u in units}    # noqa: E731
    one, groups = by_label(one), by_label(groups)
    assert sorted(one) == sorted(groups)
    for label, res in one.items():
        other = groups[label]
        acc = lambda r: json.dumps({k: v for k, v in r["metrics"].items() if k.startswith("acc")})   # noqa: E731
        assert acc(res) == acc(other), label                                      # (NaN where n/a, in both)
        if res["train"]:
            assert max(abs(x - y) for x, y in zip(res["train"]["losses"], other["train"]["losses"])) < 1e-4, label


# ------------------------------------------------------------------------------------------- several ranks, one GPU
ONE_GPU = '''
import sys
import torch
import torch.distributed as dist
# a machine with one CUDA device, as torch sees it: every rank maps to GPU 0 (set_device is recorded, not done)
devices = []
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 1
torch.cuda.set_device = devices.append
from sftnb.infra import distributed
rank, size, local = distributed.init()
assert devices == [0], devices
assert dist.get_backend() == "gloo", dist.get_backend()        # NCCL refuses two ranks on one device
distributed.barrier()
assert distributed.broadcast(f"from {rank}") == "from 0"
distributed.shutdown()
from reports import write_report
write_report(rank, {"rank": rank, "size": size})
'''


@pytest.mark.slow
def test_several_ranks_on_one_gpu_coordinate_over_gloo(tmp_path, monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert distributed.shares_devices(1) and distributed.shares_devices(2)
    assert not distributed.shares_devices(4) and not distributed.shares_devices(0)   # one GPU each; no GPU
    _torchrun(tmp_path, _script(tmp_path, "one_gpu.py", ONE_GPU), nproc=2)
    assert sorted(r["rank"] for r in _reports(tmp_path)) == [0, 1]


def test_fsdp_on_a_shared_gpu_is_refused(monkeypatch):
    import torch
    cfg = validate({"sft": {"strategy": "fsdp"}})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(SftnbError, match="^sft.strategy fsdp needs one GPU per process .NCCL.: 4 processes on 1 "
                                         "GPU.s.; use sft.strategy single to share a GPU$"):
        distributed.check_fsdp_launch(cfg)
    distributed.check_fsdp_launch(validate({}))                # single: several ranks may share the GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    distributed.check_fsdp_launch(cfg)                         # one GPU each: fine
