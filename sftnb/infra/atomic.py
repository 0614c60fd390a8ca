"""Writing files and folders atomically: a reader, or a rerun after ``kill -9``, sees the old version or the new
one, never a part.

Everything is written to a hidden sibling ``.<name>.tmp-<pid>-<random>`` and published with one ``os.rename`` /
``os.replace`` (atomic on POSIX within a filesystem). The pid in the name lets a later run tell the leftovers of a
dead process from the work of a live one (``temp_owner_pid``). This is the package's one implementation of the
mechanism: the results store, the restoration CLI, the embedded-model cache, tables, figures and executed
notebooks all use it.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal

_TEMP_NAME = re.compile(r"^\..+\.(?:tmp|old)-(\d+)-[0-9a-f]{8}(?:\.\w+)?$")


def temp_sibling(target: str | Path, tag: str = "tmp", keep_suffix: bool = False) -> Path:
    """A unique hidden path next to ``target`` (same filesystem, so a rename publishes it); ``keep_suffix``
    ends it with the target's suffix too (for tools that check it, e.g. papermill's ``.ipynb``)."""
    target = Path(target)
    suffix = target.suffix if keep_suffix else ""
    return target.parent / f".{target.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}{suffix}"


def temp_owner_pid(path: str | Path) -> int | None:
    """The pid of the process that made a ``temp_sibling`` path (None when the name is not one)."""
    m = _TEMP_NAME.match(Path(path).name)
    return int(m.group(1)) if m else None


@contextmanager
def atomic_file(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write ``target`` through; on normal exit it replaces ``target``, else it is
    removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(target)
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False, default=str) + "\n")


@contextmanager
def atomic_folder(target: str | Path, if_exists: Literal["replace", "keep"] = "replace") -> Iterator[Path]:
    """Yield a temporary folder that becomes ``target`` on normal exit (removed on any error).

    ``if_exists`` decides what happens when ``target`` exists at publication: ``replace`` swaps it out with
    renames (the old folder is deleted only once the new one is in place); ``keep`` keeps the existing folder and
    drops the new one (a concurrent writer finished the same work first)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(target)
    tmp.mkdir()
    try:
        yield tmp
        _publish(tmp, target, if_exists)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, target: Path, if_exists: str) -> None:
    if target.exists():
        if if_exists == "keep":
            shutil.rmtree(tmp, ignore_errors=True)
            return
        trash = temp_sibling(target, "old")
        os.rename(target, trash)
        os.rename(tmp, target)
        shutil.rmtree(trash, ignore_errors=True)
        return
    try:
        os.rename(tmp, target)
    except OSError:
        if not (target.exists() and if_exists == "keep"):    # lost a race to a concurrent writer: fine if keep
            raise
        shutil.rmtree(tmp, ignore_errors=True)
