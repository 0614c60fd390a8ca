"""Who this process is among the processes of one run: (rank, world_size, local_rank) from the launcher's
environment -- torchrun and ``accelerate launch`` (RANK, WORLD_SIZE, LOCAL_RANK), else Slurm's ``srun``
(SLURM_PROCID, SLURM_STEP_NUM_TASKS, SLURM_LOCALID: the batch script itself is one process even when the job has
several tasks), else (0, 1, 0). Read by the store's claims and by ``sftnb.infra.distributed``.
"""
from __future__ import annotations

import os


def world() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) of this process: torchrun / accelerate, else srun, else (0, 1, 0)."""
    env = os.environ
    if env.get("WORLD_SIZE"):
        return int(env.get("RANK", 0)), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if env.get("SLURM_STEP_NUM_TASKS") and env.get("SLURM_PROCID"):
        return int(env["SLURM_PROCID"]), int(env["SLURM_STEP_NUM_TASKS"]), int(env.get("SLURM_LOCALID", 0))
    return 0, 1, 0


def local_world_size() -> int:
    """Ranks on this host: torchrun's ``LOCAL_WORLD_SIZE``; under ``srun`` alone (which does not set it) this
    node's entry of ``SLURM_STEP_TASKS_PER_NODE`` (``"4(x2),3"``: 4 on nodes 0-1, 3 on node 2; ``SLURM_NODEID``
    picks), else ``SLURM_NTASKS_PER_NODE``; 1 when none is set."""
    env = os.environ
    if env.get("LOCAL_WORLD_SIZE"):
        return int(env["LOCAL_WORLD_SIZE"])
    if env.get("SLURM_STEP_TASKS_PER_NODE"):
        counts = []
        for part in env["SLURM_STEP_TASKS_PER_NODE"].split(","):
            n, _, times = part.partition("(x")
            counts += [int(n)] * int(times.rstrip(")") or 1)
        return counts[min(int(env.get("SLURM_NODEID", 0)), len(counts) - 1)]
    return int(env.get("SLURM_NTASKS_PER_NODE", 1))


def device():
    """This process's device: its current CUDA device (one GPU per process, as the launcher set it), else the CPU."""
    import torch

    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def pid_alive(pid: int) -> bool:
    """Is process ``pid`` (on this host) alive?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
