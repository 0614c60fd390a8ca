"""Every store unit of one model, in dependency order: what the ranks of ``sftnb run`` share.

``stages(run)`` lists the units of a ``ModelRun`` as stages of zero-argument callables (each computes or reuses
one store unit). A stage's units are independent; a stage starts once the stages before it are done
(``sftnb.distributed.compute_all``). A ``Deferred`` stage is listed when it is reached, since listing it needs
what the stages before compute (the injected model, the mastery categories, the grid's checkpoints).

The analyses after the grid come from ``param_analysis.ANALYSES``, which the notebooks read through too.
"""
from __future__ import annotations

from .distributed import Deferred
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
