"""Results store: every unit of work is saved once, keyed by what determines it, and never half-written.

A *unit* (a probe chunk, one SFT run with its evaluation, one restoration sweep, ...) is identified by a
``kind`` and a ``spec``: a JSON-able dict of everything that determines its result (model, data, params,
seed). Its key is a SHA-256 of the canonical JSON of both, so changing any parameter makes a new unit and
re-running the same parameters finds the old one.

Layout: ``<root>/<kind>/<label>-<key16>/`` holding ``spec.json``, ``result.json`` and any files the unit
wrote (a checkpoint, per-fact records). A unit is computed in a hidden temporary directory next to it and
published with one ``os.rename`` (atomic on POSIX): a run killed at any moment (even ``kill -9``) leaves
either the finished unit or a temporary directory that the next run deletes and recomputes.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from . import locks as claims
from .launch import pid_alive, world
from .atomic import atomic_folder, atomic_write_json, temp_owner_pid

STORE_VERSION = 1


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def spec_hash(kind: str, spec: dict) -> str:
    return hashlib.sha256(canonical_json({"kind": kind, "v": STORE_VERSION, "spec": spec}).encode()).hexdigest()


class Unit:
    def __init__(self, store: "Store", kind: str, spec: dict, label: str = ""):
        self.store, self.kind, self.spec = store, kind, spec
        self.key = spec_hash(kind, spec)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:60]
        self.path = store.root / kind / (f"{safe}-{self.key[:16]}" if safe else self.key[:16])

    @property
    def done(self) -> bool:
        return (self.path / "result.json").is_file()

    def result(self) -> dict:
        return json.loads((self.path / "result.json").read_text(encoding="utf-8"))

    def file(self, name: str) -> Path:
        return self.path / name

    @contextmanager
    def writing(self) -> Iterator[Path]:
        """Yield a temporary directory; on normal exit it becomes the unit (atomically), else it is removed."""
        # "keep": if a concurrent writer published the same unit first, its copy stays and ours is dropped
        with atomic_folder(self.path, if_exists="keep") as tmp:
            yield tmp
            if not (tmp / "result.json").is_file():
                raise RuntimeError(f"unit {self.kind}/{self.path.name} wrote no result.json")

    def compute(self, fn: Callable[[Path], dict]) -> dict:
        """Return the stored result, or run ``fn(tmpdir) -> result`` and publish it."""
        if self.done:
            self.store.reused.append(self)
            self.store.log("reused", self)
            return self.result()
        # --- claims (sftnb.infra.locks): one process computes the unit, the others wait for it and read it ---
        claim = claims.claim_or_wait(self)
        if claim is None:                          # another process published it meanwhile
            self.store.reused.append(self)
            self.store.log("reused", self)
            return self.result()
        # --- end claims ---
        t0 = time.perf_counter()
        with claim, self.writing() as tmp:
            result = dict(fn(tmp))
            result.setdefault("_seconds", round(time.perf_counter() - t0, 3))
            atomic_write_json(tmp / "spec.json", {"kind": self.kind, "spec": self.spec})
            atomic_write_json(tmp / "result.json", result)
        self.store.computed.append(self)
        self.store.log("computed", self)
        return result


class Store:
    """All units of one run directory. ``computed`` / ``reused`` list what this process did."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.computed: list[Unit] = []
        self.reused: list[Unit] = []
        claims.check_exclusive_create(self.root)   # claims need O_EXCL (sftnb.infra.locks)
        self.clean_stale()

    def log(self, event: str, unit: Unit) -> None:
        """One line per unit served, so ``sftnb run`` can say what each notebook computed and reused, and which
        rank of which host did it (several processes share one store: ``sftnb.infra.distributed``)."""
        line = json.dumps({"event": event, "kind": unit.kind, "unit": unit.path.name, "t": round(time.time(), 3),
                           "rank": world()[0], "host": socket.gethostname(), "pid": os.getpid()})
        with open(self.root / "units.log.jsonl", "a", encoding="utf-8") as fh:
            fh.write(line + "\n")

    def unit(self, kind: str, spec: dict, label: str = "") -> Unit:
        return Unit(self, kind, spec, label)

    def compute(self, kind: str, spec: dict, fn: Callable[[Path], dict], label: str = "") -> dict:
        return self.unit(kind, spec, label).compute(fn)

    def clean_stale(self) -> int:
        """Delete temporary directories left by processes that died mid-unit, and stale claims (``sftnb.infra.locks``).
        A temporary folder whose unit is claimed by a live process (maybe on another node) is kept."""
        n = 0
        for tmp in self.root.glob("*/.*"):
            pid = temp_owner_pid(tmp)
            if pid is None:
                continue
            unit_name = tmp.name[1:].rsplit(".", 1)[0]                 # ".<unit>.tmp-<pid>-<hex>" -> "<unit>"
            if claims.live_claim(tmp.parent / unit_name):               # claims: a live claimer's work in progress
                continue
            if not pid_alive(pid) or pid == os.getpid():
                shutil.rmtree(tmp, ignore_errors=True)
                n += 1
        claims.clean_stale_claims(self.root)                            # claims: dead or silent holders
        return n

    def units(self, kind: str) -> list[dict]:
        """Every finished unit of a kind as ``{"spec": ..., "result": ..., "path": ...}``."""
        out = []
        for p in sorted((self.root / kind).glob("*/result.json")):
            spec = json.loads((p.parent / "spec.json").read_text(encoding="utf-8"))["spec"]
            out.append({"spec": spec, "result": json.loads(p.read_text(encoding="utf-8")), "path": p.parent})
        return out

    def summary(self) -> str:
        return f"{len(self.computed)} unit(s) computed, {len(self.reused)} reused from {self.root}"
