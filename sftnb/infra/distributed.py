"""Many processes, one run: ``sftnb run`` under torchrun, ``accelerate launch`` or Slurm ``srun``.

Design
------
*Who am I.* ``world()`` reads (rank, world_size, local_rank) from the launcher's environment: ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK`` (torchrun, and ``accelerate launch``, which runs torchrun); else Slurm's
``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS``, ``SLURM_LOCALID`` (set by ``srun`` for each task of a job step; the
batch script itself is one process even when the job has several tasks); else (0, 1, 0). ``init()`` starts
torch.distributed when world_size > 1: NCCL when CUDA is available (each rank on GPU ``local_rank``; several
ranks on one GPU: ``shares_devices``), gloo otherwise, plus a gloo group for the CPU-side coordination
(barriers, broadcasting results) so that waiting never occupies a GPU. A barrier can wait for hours (other ranks computing a long unit): the timeout is
``SFTNB_DIST_TIMEOUT_S`` (default 48 h). ``srun`` without torchrun needs ``MASTER_ADDR`` and ``MASTER_PORT``
exported (the README's sbatch script does).

*Work sharing.* ``compute_all(stages)`` takes the run's units in dependency order, grouped in stages (lists of
zero-argument callables, each computing or reusing store units). In each stage rank r walks the units in a
rank-strided order -- its own share r, r+N, r+2N, ... first, then the other ranks' shares, each from its tail --
and calls them. Claims (``sftnb.infra.locks``) make every unit computed exactly once: a unit another process is
computing is skipped (no-wait mode) and revisited after the others, so a rank that finished its share takes over
units nobody has started yet instead of waiting behind a busy one. A barrier ends each stage. Nothing here
schedules or shards by hand: the store's claims balance the load, the launcher starts the processes.

*What rank 0 does.* ``sftnb run`` (``sftnb.work.run_units``, hooked into ``sftnb.runner.run_cli``): every rank computes
its share of ``Experiment.work()`` (every model's units, ``sftnb.work``), then rank 0 alone executes notebooks
01-06 with papermill (they now only reuse units) and writes the tables and figures, while the other ranks wait
at a barrier and exit 0. The notebook kernels are started without the launcher's variables, so they are plain
single processes.

*Listed when reached.* A stage may be a ``Deferred``: its units are listed when the ranks reach it, after the
stages before it are finished (which SFT runs exist depends on the probe's categories).

*Groups of ranks.* With ``sft.strategy: fsdp`` each SFT run is sharded over a group of ``sft.fsdp_ranks`` ranks
(auto: the smallest group on which the plan says it fits), listed in a ``Grouped`` stage: the world splits into
groups of consecutive ranks (``groups``: torch.distributed.new_group, a DeviceMesh per group for FSDP2) and the
groups share the runs as ranks share a plain stage -- several runs train at once, one per group. Inside a group
the leader (its first rank) claims and tells the others (``_compute_in_group``), so the group moves in lockstep.
LoRA runs, which train on one device, come with it (``Grouped.then``): a rank whose group has no run left
takes them, before the stage's barrier.

*Collective units.* A group of every rank is a ``Collective`` stage: every rank calls each of its units, in the same order. Each callable computes
its unit through ``compute_collective(unit, fn)``: rank 0 checks the store and claims the unit (waiting if
another job holds it), broadcasts whether it must be computed; if so, every rank runs ``fn`` -- on rank 0 as the
unit's ``compute`` function with its temporary folder, on the others with ``None`` -- and rank 0 publishes; the
result is then broadcast, so every rank returns it. ``fn`` must make the same collective calls on every rank
(the FSDP training) and do the rest (evaluation, writing files) only where its folder is not None.
"""
from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Callable, Sequence

from . import locks as claims
from .errors import SftnbError
from .launch import device, local_world_size, world

TIMEOUT_S = float(os.environ.get("SFTNB_DIST_TIMEOUT_S", 48 * 3600))
# what makes a process one rank of several: stripped from the environment of rank 0's notebook kernels
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
               "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT",
               "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_USE_AGENT_STORE", "TORCHELASTIC_ERROR_FILE",
               "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID", "SLURM_STEP_TASKS_PER_NODE",
               "SLURM_NODEID", "SLURM_NTASKS_PER_NODE")

_cpu_group = None


class Collective(list):
    """A stage whose units every rank runs together, in the same order (FSDP SFT units; see the module doc)."""


class Grouped(list):
    """A stage of collective units, each computed by one group of ``size`` ranks: the world splits into
    world / size groups (``groups``) that share the units as ranks share a plain stage, several training at once
    (the FSDP SFT runs, sharded over the smallest group on which they fit)."""

    def __init__(self, units, size: int, then: Sequence[Callable[[], object]] = ()):
        super().__init__(units)
        self.size, self.then = size, list(then)       # then: plain units a rank takes once its group is done


class Deferred:
    """Stages listed when ``compute_all`` reaches them: ``make()`` returns one stage's units (a flat list, or a
    ``Collective``) or a list of stages.
    Listing some stages needs what earlier stages compute (the probe categories decide which SFT runs exist)."""

    def __init__(self, make: Callable[[], Sequence[Callable[[], object]]]):
        self.make = make


# ------------------------------------------------------------------------------------------- who am I
_world = world                                         # compute_all's argument ``world`` shadows the function


def is_main() -> bool:
    return world()[0] == 0


def initialized() -> bool:
    import torch.distributed as dist
    return dist.is_available() and dist.is_initialized()


def init() -> tuple[int, int, int]:
    """Start torch.distributed when this process is one of several (idempotent); returns ``world()``."""
    global _cpu_group
    rank, size, local = world()
    if size <= 1 or initialized():
        return rank, size, local
    import torch
    import torch.distributed as dist

    if not (os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT")):
        raise SftnbError(f"process {rank} of {size} but MASTER_ADDR / MASTER_PORT are not set: launch with "
                         f"torchrun, or export them before srun (see the README's sbatch script)")
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local % torch.cuda.device_count())
    nccl = cuda and not shares_devices(torch.cuda.device_count())
    timeout = timedelta(seconds=TIMEOUT_S)
    dist.init_process_group("nccl" if nccl else "gloo", init_method="env://", rank=rank, world_size=size,
                            timeout=timeout)
    _cpu_group = dist.new_group(backend="gloo", timeout=timeout) if nccl else dist.group.WORLD
    return rank, size, local


def shares_devices(device_count: int) -> bool:
    """Do several ranks of this host share a GPU (``torchrun --nproc_per_node K`` with fewer than K GPUs: rank r
    runs on GPU r mod count)? A small model leaves a large GPU mostly idle, so K independent SFT runs on one
    device go faster than one. NCCL refuses two ranks on one device, so such a run coordinates over gloo only
    (the ranks share the store's units, no tensor crosses between them); ``sft.strategy: fsdp`` is refused."""
    return device_count > 0 and local_world_size() > device_count


def barrier() -> None:
    """Wait for every rank (a no-op in a single process)."""
    if initialized():
        import torch.distributed as dist
        dist.barrier(group=_cpu_group)


def broadcast(obj=None, group=None):
    """Rank 0's ``obj`` on every rank (pickled over the CPU group; a no-op in a single process); with ``group``
    (a ``Group``), the group leader's on the group's ranks."""
    if not initialized():
        return obj
    import torch.distributed as dist
    box = [obj]
    if group is None:
        dist.broadcast_object_list(box, src=0, group=_cpu_group)
    else:
        dist.broadcast_object_list(box, src=group.ranks[0], group=group.cpu)
    return box[0]


# ------------------------------------------------------------------------------------------- groups of ranks
class Group:
    """One group of consecutive ranks: its index, its ranks (the first leads), its process group (the run's
    backend: NCCL on GPUs) and its CPU (gloo) group for coordination."""

    def __init__(self, index: int, ranks: list[int], pg, cpu):
        self.index, self.ranks, self.pg, self.cpu = index, ranks, pg, cpu


_groups: dict[int, list[Group]] = {}
_current: contextvars.ContextVar = contextvars.ContextVar("sftnb_group", default=None)
_lockstep: contextvars.ContextVar = contextvars.ContextVar("sftnb_lockstep", default=False)   # in a collective stage


def groups(size: int) -> list[Group]:
    """The world split into groups of ``size`` consecutive ranks (made once per size: every rank must call this,
    in the same order, since torch.distributed.new_group is collective)."""
    import torch
    import torch.distributed as dist

    if size not in _groups:
        world_size, made = dist.get_world_size(), []
        for i, start in enumerate(range(0, world_size - world_size % size, size)):
            ranks = list(range(start, start + size))
            pg = dist.new_group(ranks, timeout=timedelta(seconds=TIMEOUT_S))
            cpu = dist.new_group(ranks, backend="gloo", timeout=timedelta(seconds=TIMEOUT_S)) \
                if torch.cuda.is_available() else pg
            made.append(Group(i, ranks, pg, cpu))
        _groups[size] = made
    return _groups[size]


@contextlib.contextmanager
def lockstep():
    """Declare that every rank runs the enclosed ``compute_collective`` calls together, in the same order (what a
    Collective stage does; for callers outside ``compute_all``)."""
    token = _lockstep.set(True)
    try:
        yield
    finally:
        _lockstep.reset(token)


def current_group() -> Group | None:
    """The group this rank computes a ``Grouped`` unit with (None outside a Grouped stage)."""
    return _current.get()


def group_mesh():
    """The DeviceMesh of the current group, for FSDP (None outside a Grouped stage: the whole world)."""
    group = current_group()
    if group is None:
        return None
    from torch.distributed.device_mesh import DeviceMesh

    return DeviceMesh.from_group(group.pg, device().type)


def shutdown() -> None:
    global _cpu_group
    if initialized():
        import torch.distributed as dist
        dist.destroy_process_group()
    _cpu_group = None


def check_fsdp_launch(cfg) -> None:
    """Refuse, before any work, an FSDP run started as one process."""
    if getattr(cfg.sft, "strategy", "single") != "fsdp":
        return
    if world()[1] < 2:
        raise SftnbError("sft.strategy fsdp needs several processes: launch with torchrun --nproc_per_node N")
    import torch
    if torch.cuda.is_available() and shares_devices(torch.cuda.device_count()):
        raise SftnbError(f"sft.strategy fsdp needs one GPU per process (NCCL): {os.environ['LOCAL_WORLD_SIZE']} "
                         f"processes on {torch.cuda.device_count()} GPU(s); use sft.strategy single to share a GPU")


# ------------------------------------------------------------------------------------------- work sharing
def share_order(n: int, rank: int, size: int) -> list[int]:
    """Rank ``rank``'s walk over ``n`` units: its own share rank, rank+size, ... first, then the other ranks'
    shares (the next rank's first), each from its tail, where its owner will get last."""
    order = list(range(rank, n, size))
    for k in range(1, size):
        order += list(range((rank + k) % size, n, size))[::-1]
    return order


def _stages(work) -> list[Sequence[Callable[[], object]]]:
    if isinstance(work, (Collective, Grouped)):
        return [work]
    work = list(work)
    if work and all(callable(u) and not isinstance(u, Deferred) for u in work):
        return [work]                                    # a flat list is one stage
    return work


def compute_all(work, rank: int | None = None, world: int | None = None) -> dict:
    """Call every unit of ``work`` (a list of stages, each a list of zero-argument callables; a flat list is one
    stage), sharing them out between the ``world`` ranks (default: ``world()``): rank-strided order, units busy
    in another process revisited last, a barrier after each stage. ``Collective`` stages are called by every
    rank, in order. Returns {"stages", "units", "busy_skips", "seconds"}."""
    env_rank, env_size, _ = _world()
    rank = env_rank if rank is None else rank
    size = env_size if world is None else world
    t0, units, skips, n_stages = time.perf_counter(), 0, 0, 0
    todo = _stages(work)
    while todo:
        stage = todo.pop(0)
        if isinstance(stage, Deferred):                  # its stages, listed now (every rank lists the same)
            todo[:0] = _stages(stage.make())
            continue
        n_stages += 1
        units += len(stage)
        if isinstance(stage, (Collective, Grouped)):
            with lockstep():
                if isinstance(stage, Grouped) and initialized() and stage.size < size:
                    skips += _share_grouped(stage, rank)
                else:                                   # Collective, or one group of every rank
                    for unit in stage:
                        unit()
            if isinstance(stage, Grouped) and stage.then:   # no barrier before: a group done early takes these
                units += len(stage.then)
                skips += _share(stage.then, rank, size)
        else:
            skips += _share(stage, rank, size)
        barrier()
    return {"stages": n_stages, "units": units, "busy_skips": skips,
            "seconds": round(time.perf_counter() - t0, 3)}


def _share_grouped(stage: Grouped, rank: int) -> int:
    """A Grouped stage: the groups share its units as ranks share a plain stage (``_share``, group index for
    rank); inside a group every rank walks the same units in lockstep, since ``compute_collective`` makes the
    leader's decision (compute / published / busy elsewhere) every member's. Ranks left over when the group size
    does not divide the world only wait at the stage's barrier."""
    made = groups(stage.size)
    mine = next((g for g in made if rank in g.ranks), None)
    if mine is None:
        return 0
    token = _current.set(mine)
    try:
        return _share(stage, mine.index, len(made))
    finally:
        _current.reset(token)


def _share(stage: Sequence[Callable[[], object]], rank: int, size: int) -> int:
    pending, skips = share_order(len(stage), rank, size), 0
    waited, next_notice = 0.0, claims.FIRST_NOTICE_S
    while pending:
        busy = []
        for i in pending:
            try:
                with claims.no_wait():
                    stage[i]()
            except claims.Busy as e:
                busy.append(i)
                last = e
        skips += len(busy)
        if busy and len(busy) == len(pending):          # every unit left is being computed elsewhere
            time.sleep(claims.POLL_S)
            waited += claims.POLL_S
            if waited >= next_notice:
                print(f"sftnb: rank {rank} waiting for {len(busy)} unit(s) computed elsewhere ({last})",
                      file=sys.stderr, flush=True)
                next_notice += claims.NOTICE_EVERY_S
        pending = busy
    return skips


# ------------------------------------------------------------------------------------------- collective units
def compute_collective(unit, fn: Callable[[Path | None], dict]) -> dict:
    """Compute ``unit`` with every rank taking part (see the module doc): ``fn(tmp)`` runs on every rank, ``tmp``
    being the unit's temporary folder on rank 0 and None elsewhere; rank 0 claims and publishes; every rank
    returns the result. In a single process it is ``unit.compute(fn)``."""
    if not initialized():
        return unit.compute(fn)
    if not _lockstep.get():
        # called outside a Collective / Grouped stage (a restoration sweep needs its fine-tuned run): the ranks are
        # not together here, so no collective call: the unit was computed by its stage, read it
        if not unit.done:
            raise SftnbError(f"{unit.kind}/{unit.path.name} spans several ranks and is computed in its own stage; "
                             f"it is missing (did that stage fail?)")
        return unit.compute(fn)
    group = current_group()
    if group is not None:
        return _compute_in_group(unit, fn, group)
    rank = world()[0]
    claim = None
    if rank == 0 and not unit.done:
        with claims.waiting():                          # the ranks must agree: wait, never skip
            claim = claims.claim_or_wait(unit)
    if not broadcast(claim is not None if rank == 0 else None):
        return broadcast(unit.compute(fn) if rank == 0 else None)     # published already: rank 0 reads it
    return _compute_claimed(unit, fn, claim, rank == 0, None)


def _compute_claimed(unit, fn, claim, leader: bool, group: "Group | None") -> dict:
    """Every rank of the group (or of the world) runs ``fn``; the leader, holding ``claim``, publishes."""
    if not leader:
        fn(None)
        status, value = broadcast(None, group)
        if status != "ok":
            raise SftnbError(f"the leading rank failed to compute {unit.kind}/{unit.path.name}: {value}")
        return value
    try:
        with claim:
            result = unit.compute(fn)                   # this process holds the claim: computes it (re-entrant)
    except BaseException as e:
        broadcast(("error", f"{type(e).__name__}: {e}"), group)
        raise
    return broadcast(("ok", result), group)[1]


def _compute_in_group(unit, fn, group: Group) -> dict:
    """``compute_collective`` inside a Grouped stage: the group leader tries the claim without waiting and tells
    the group what it found -- a unit published already (every member returns it), one computed by another group
    (every member raises ``claims.Busy``, so the group moves on together), or one this group computes."""
    leader = world()[0] == group.ranks[0]
    decision, claim = None, None
    if leader:
        try:
            claim = None if unit.done else claims.claim_or_wait(unit)
            decision = "compute" if claim is not None else "done"
        except claims.Busy as e:
            decision = ("busy", str(e))
    decision = broadcast(decision, group)
    if decision == "done":
        return broadcast(unit.compute(fn) if leader else None, group)
    if decision != "compute":
        raise claims.Busy(unit.path, {"host": "another group", "rank": decision[1]})
    return _compute_claimed(unit, fn, claim, leader, group)
