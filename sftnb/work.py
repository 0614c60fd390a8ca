"""Every store unit of one model, in dependency order: what the ranks of ``sftnb run`` share.

``stages(run)`` lists the units of a ``ModelRun`` as stages of zero-argument callables (each computes or reuses
one store unit). A stage's units are independent; a stage starts once the stages before it are done
(``sftnb.infra.distributed.compute_all``). A ``Deferred`` stage is listed when it is reached, since listing it needs
what the stages before compute (the injected model, the mastery categories, the grid's checkpoints).

The analyses after the grid come from ``param_analysis.ANALYSES``, which the notebooks read through too.
"""
from __future__ import annotations

import os
import time
from typing import Callable

from .infra import distributed
from .infra.distributed import Deferred
from .param_analysis import ANALYSES, TASKS


def stages(run) -> list:
    cfg = run.cfg
    out: list = []
    if run.mc.inject is not None:
        out.append([lambda: run.injection])

    # one callable per probe chunk (not per fact set): a rank that meets a chunk another rank computes takes
    # the next one, so every rank probes while chunks remain
    def probes():
        units = [c for s in ("train", "test", "testood")
                 for c in run.probe_chunks(run.exp.sets[s], cfg.probe.method, f"{run.name}-{s}")]
        if cfg.probe.method == "calibrated":
            seed, facts = cfg.probe.seed, run.study_facts()
            units += run.probe_chunks(facts, "sampling", f"{run.name}-study-A", seed)
            units += run.probe_chunks(facts, "sampling", f"{run.name}-study-B", seed + 1)
        return units

    out.append(Deferred(probes))
    tasks = TASKS.keys(run)
    if tasks:
        out.append([lambda key=key: TASKS.unit(run, key) for key in tasks])
    if run.name not in {m.name for m in cfg.grid_models}:
        return out
    out.append([run.reference])
    out.append(Deferred(run.grid.units))
    out.append(Deferred(lambda: [lambda a=a, key=key: a.unit(run, key) for a in ANALYSES for key in a.keys(run)]))
    return out


# ------------------------------------------------------------------------------------------- sftnb run
def run_units(make_experiment: Callable[[], object]) -> bool:
    """``sftnb run``'s multi-process step: start torch.distributed, build the run's ``Experiment`` (from
    ``make_experiment``, which ``sftnb.runner`` provides) and compute this rank's share of every unit of
    ``Experiment.work()``. Returns True on rank 0, which goes on to execute the notebooks (with the launcher's
    variables removed from its environment, so their kernels are single processes) and calls ``finish()``;
    the other ranks wait at a barrier until rank 0 has finished and return False."""
    rank, size, _ = distributed.init()
    t0 = time.perf_counter()
    exp = make_experiment()
    cfg = exp.cfg
    if rank == 0:
        print(f"sftnb run {cfg.run_name}: {size} processes share the run's units (store {exp.store.root})", flush=True)
    for model_stages in exp.work():                     # per model, its stages in dependency order
        distributed.compute_all(model_stages)
    if rank == 0:
        print(f"  units done in {time.perf_counter() - t0:.1f} s (rank 0 computed {len(exp.store.computed)}, "
              f"reused {len(exp.store.reused)})", flush=True)
    distributed.barrier()
    if rank != 0:
        distributed.barrier()                           # rank 0 executes the notebooks meanwhile
        distributed.shutdown()
        return False
    for var in distributed.LAUNCH_VARS:
        os.environ.pop(var, None)
    return True


def finish() -> None:
    """Rank 0, after the notebooks: release the waiting ranks and end torch.distributed (no-op otherwise)."""
    if distributed.initialized():
        distributed.barrier()
        distributed.shutdown()
