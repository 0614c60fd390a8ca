"""``sftnb probe`` as one library call: facts probed by a model into a JSON Lines file, one line per fact,
resumable chunk by chunk, calibrated on a sampled subset for the calibrated method (``sftnb.calibration``)."""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from .infra.atomic import atomic_write_text
from .calibration import Calibration, fit, study_facts
from .config import ProbeConfig
from .data.facts import Fact
from .mastery import probe_stored
from .lm.models import load_model, model_fingerprint
from .data.relations import Relation
from .infra.store import Store


@dataclass
class ProbedFile:
    """What ``probe_to_jsonl`` wrote: the table (one row per fact), the chunks an interrupted earlier run had
    finished (in ``work``), and for the calibrated method the calibration and how many sampled facts it was fitted
    on."""
    table: pd.DataFrame
    work: Path
    resumed_chunks: int
    calibration: Calibration | None = None
    calibration_facts: int = 0


JSONL_COLUMNS = ["relation", "subject", "answers", "split", "domain", "R", "category", "template_rates"]


def probe_to_jsonl(model_path: str, facts: Sequence[Fact], relations: dict[str, Relation], cfg: ProbeConfig,
                   out: Path, device: str = "auto", dtype: str = "auto", batch_tokens="auto") -> ProbedFile:
    """``sftnb probe``: ``facts`` probed with the model at ``model_path``, one JSON line per fact at ``out``
    (``JSONL_COLUMNS``, atomically). Resumable: each chunk of ``cfg.chunk_facts`` facts is a store unit in a
    hidden folder beside ``out`` (``.<out name>.units/``), removed once ``out`` is written. A calibrated probe is
    the likelihood probe rescaled per relation to the sampled rates of a seeded subset of
    ``cfg.calibration_facts`` of the facts (``sftnb.calibration``)."""
    model, tok = load_model(model_path, device=device, dtype=dtype)
    work = out.parent / f".{out.name}.units"
    store = Store(work)
    resumed = sum(1 for _ in work.glob("probe/*/result.json"))
    model_id, weights_dtype = model_fingerprint(model_path), str(next(model.parameters()).dtype)
    df = probe_stored(store, model, tok, model_id, facts, relations, cfg, batch_tokens=batch_tokens, label="cli",
                      dtype=weights_dtype)
    done = ProbedFile(df, work, resumed)
    if cfg.method == "calibrated":
        subset = study_facts([facts], min(cfg.calibration_facts, len(facts)), cfg.seed)
        sampled = probe_stored(store, model, tok, model_id, subset, relations,
                               cfg.model_copy(update={"method": "sampling"}), batch_tokens=batch_tokens,
                               label="cli-calibration", dtype=weights_dtype)
        cal = fit(df, sampled)
        done = ProbedFile(cal.apply(df, cfg.n_samples), work, resumed, cal, len(subset))
    atomic_write_text(out, done.table[JSONL_COLUMNS].to_json(orient="records", lines=True, force_ascii=False))
    shutil.rmtree(work, ignore_errors=True)
    return done
