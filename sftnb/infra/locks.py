"""Claims: exactly one process computes each store unit, also across the processes and nodes of a cluster.

Design
------
*Claiming.* Before computing a unit ``<root>/<kind>/<name>/`` a process creates the claim file
``<root>/<kind>/.<name>.claim`` with ``os.open(path, O_CREAT | O_EXCL | O_WRONLY)``: the kernel (or the NFS
server, NFSv3 and later) creates it for exactly one caller and fails with ``FileExistsError`` for every other.
The file holds ``{host, pid, rank, started, heartbeat_s, nonce, unit}``. While the unit computes, a daemon thread
refreshes the file's mtime every ``heartbeat_s`` (default 30 s; ``SFTNB_CLAIM_HEARTBEAT_S``). The claim is
removed once the unit is published, or when its computation raises.

*Waiting.* A process that finds the unit unfinished and the claim taken waits: it polls every ~1 s until the
unit is published (then reads it), printing one progress line after 10 s and then every 2 minutes. If the
claim disappears without a result (the holder's computation raised), the waiter claims the unit itself. This is
also how dependencies work across processes: a grid unit that needs a probe chunk another rank is computing
simply waits for that chunk.

*Staleness.* A claim is stale when its holder runs on this host and its pid is dead, or when its mtime is older
than ``stale_s`` (default 10 min; ``SFTNB_CLAIM_STALE_S``; it must exceed the heartbeat by a wide margin, also to
absorb clock skew between hosts of a shared filesystem), or when it is still empty (the holder died between
creating and writing it) and older than ``heartbeat_s``. A stale claim is broken by renaming it to a unique
hidden name first and unlinking that name afterwards: only one of several waiters' renames can succeed, so two
waiters never both take the unit; the one that succeeded checks that the file it moved away is the claim it
judged stale (same nonce) and puts it back otherwise. A ``kill -9`` of a claimer therefore costs nothing but
the unit it was computing: its temporary folder is deleted by ``Store.clean_stale`` (which also removes stale
claims and spares the temporary folders of units whose claim is live, e.g. those of a process on another node),
and its claim is retaken (dead pid on the same host at once, else after ``stale_s``).

*Re-entrancy.* A process that already holds a unit's claim and asks for the same unit again (a nested
``compute``) computes it without a second claim, as the store always did: waiting for itself would deadlock.

*No-wait mode.* ``with no_wait():`` makes ``claim_or_wait`` raise ``Busy`` instead of waiting, so that the work
sharing in ``sftnb.infra.distributed.compute_all`` can skip a unit another process is computing and come back to it.

*Filesystems without O_EXCL.* ``check_exclusive_create(root)`` runs at ``Store()`` creation: it creates the same
probe file twice and expects the second to fail. Where it does not (some FUSE / object-store mounts, NFSv2),
claims cannot be trusted: a multi-process run refuses to start (one line naming the folder: put ``run.out_dir`` on
a local or NFSv3+ filesystem), a single-process run only warns and carries on, since one process never races
itself (the store's atomic publication still keeps every unit whole).
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import os
import socket
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Iterator

from .errors import SftnbError
from .launch import pid_alive, world

HEARTBEAT_S = float(os.environ.get("SFTNB_CLAIM_HEARTBEAT_S", 30))
STALE_S = float(os.environ.get("SFTNB_CLAIM_STALE_S", 600))
POLL_S = float(os.environ.get("SFTNB_CLAIM_POLL_S", 1.0))
FIRST_NOTICE_S, NOTICE_EVERY_S = 10.0, 120.0
SUFFIX = ".claim"

_held: dict[Path, "Claim"] = {}                 # claims this process holds (for re-entrant computes)
_no_wait = contextvars.ContextVar("sftnb_claims_no_wait", default=False)


class Busy(Exception):
    """Raised in no-wait mode when another live process holds the unit's claim."""

    def __init__(self, path: Path, owner: dict | None):
        super().__init__(f"{path} is being computed by {describe(owner)}")
        self.path, self.owner = path, owner


@contextlib.contextmanager
def no_wait() -> Iterator[None]:
    token = _no_wait.set(True)
    try:
        yield
    finally:
        _no_wait.reset(token)


@contextlib.contextmanager
def waiting() -> Iterator[None]:
    """The default: wait for a unit another process computes (undoes an enclosing ``no_wait``)."""
    token = _no_wait.set(False)
    try:
        yield
    finally:
        _no_wait.reset(token)


def claim_path(unit_path: Path) -> Path:
    return unit_path.parent / f".{unit_path.name}{SUFFIX}"


def unit_of_claim(path: Path) -> str | None:
    """The unit folder name a claim file stands for (None when ``path`` is not a claim)."""
    n = path.name
    return n[1:-len(SUFFIX)] if n.startswith(".") and n.endswith(SUFFIX) and len(n) > len(SUFFIX) + 1 else None


def _rank() -> int:
    return world()[0]


def describe(owner: dict | None) -> str:
    if not owner:
        return "another process"
    return f"{owner.get('host')} pid {owner.get('pid')} rank {owner.get('rank')}"


# ------------------------------------------------------------------------------------------- one claim
class Claim:
    """A claim this process holds; a context manager that releases it (and stops its heartbeat) on exit."""

    def __init__(self, path: Path, info: dict | None, heartbeat_s: float):
        self.path, self.info, self.heartbeat_s = path, info, heartbeat_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    @property
    def reentrant(self) -> bool:
        return self.info is None

    def start(self) -> "Claim":
        if self.reentrant:
            return self
        _held[self.path] = self
        self._thread = threading.Thread(target=self._beat, name=f"claim-heartbeat {self.path.name}", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)                     # mtime = now (the server's clock on NFS)
                if not self.lost and _read(self.path).get("nonce") != self.info["nonce"]:
                    raise FileNotFoundError
            except (OSError, ValueError):
                if not self.lost:
                    self.lost = True
                    print(f"sftnb: warning: the claim {self.path} was taken over (judged stale); this process "
                          f"finishes the unit anyway, the first copy published is kept", file=sys.stderr)

    def release(self) -> None:
        if self.reentrant:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        _held.pop(self.path, None)
        with contextlib.suppress(OSError, ValueError):
            if _read(self.path).get("nonce") == self.info["nonce"]:
                self.path.unlink()

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _read(path: Path) -> dict:
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if text.strip() else {}


def try_claim(path: Path, heartbeat_s: float | None = None) -> Claim | None:
    """Create the claim file exclusively; None if it exists. The returned claim is started (heartbeat running)."""
    heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
    if path in _held:                                  # nested compute of a unit this process computes
        return Claim(path, None, heartbeat_s)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    info = {"host": socket.gethostname(), "pid": os.getpid(), "rank": _rank(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "heartbeat_s": heartbeat_s, "nonce": uuid.uuid4().hex,
            "unit": unit_of_claim(path)}
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(info))
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            path.unlink()
        raise
    return Claim(path, info, heartbeat_s).start()


def stale_reason(path: Path, stale_s: float | None = None, heartbeat_s: float | None = None) -> str | None:
    """Why the claim at ``path`` is stale, or None when it is live (or gone)."""

    stale_s = STALE_S if stale_s is None else stale_s
    heartbeat_s = HEARTBEAT_S if heartbeat_s is None else heartbeat_s
    try:
        age = time.time() - path.stat().st_mtime
        owner = _read(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        owner = {}
    if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int):
        if not pid_alive(owner["pid"]):
            return f"pid {owner['pid']} is dead"
    if age > stale_s:
        return f"no heartbeat for {age:.0f} s"
    if not owner and age > heartbeat_s:
        return f"empty for {age:.0f} s"
    return None


def break_stale(path: Path, stale_s: float | None = None, heartbeat_s: float | None = None) -> bool:
    """Remove the claim at ``path`` if it is stale, safely against other processes doing the same: rename it
    away (only one rename succeeds), check the moved file is the one judged stale, then unlink it."""
    try:
        judged = _read(path)
    except (OSError, ValueError):
        judged = {}
    reason = stale_reason(path, stale_s, heartbeat_s)
    if reason is None:
        return False
    trash = path.parent / f"{path.name}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return True                                  # another waiter broke it first
    try:
        moved = _read(trash)
    except (OSError, ValueError):
        moved = {}
    if moved.get("nonce") != judged.get("nonce"):   # a new claim was made in between: give it back
        with contextlib.suppress(OSError):
            os.link(trash, path)                     # no-clobber: fails if yet another claim exists
    with contextlib.suppress(OSError):
        trash.unlink()
    print(f"sftnb: retaking the claim on {path.parent.name}/{unit_of_claim(path)} ({reason}; "
          f"was {describe(judged)})", file=sys.stderr)
    return True


def claim_or_wait(unit, heartbeat_s: float | None = None, stale_s: float | None = None,
                  poll_s: float | None = None) -> Claim | None:
    """A started claim on ``unit`` (a ``sftnb.infra.store.Unit``) when this process must compute it, or None once
    another process has published it (after waiting for it). In no-wait mode raises ``Busy`` instead of waiting."""
    path = claim_path(unit.path)
    path.parent.mkdir(parents=True, exist_ok=True)
    poll_s = POLL_S if poll_s is None else poll_s
    t0, next_notice = time.monotonic(), FIRST_NOTICE_S
    while True:
        if unit.done:
            return None
        claim = try_claim(path, heartbeat_s)
        if claim is not None:
            if unit.done:                            # published between our check and our claim
                claim.release()
                return None
            return claim
        if break_stale(path, stale_s, heartbeat_s):
            continue
        if _no_wait.get():
            raise Busy(unit.path, _owner(path))
        waited = time.monotonic() - t0
        if waited >= next_notice:
            print(f"sftnb: rank {_rank()} waiting {waited:.0f} s for {unit.kind}/{unit.path.name} "
                  f"(computed by {describe(_owner(path))})", file=sys.stderr, flush=True)
            next_notice += NOTICE_EVERY_S
        time.sleep(poll_s * (0.75 + 0.5 * (uuid.uuid4().int % 1000) / 1000))   # jitter: waiters spread out


def _owner(path: Path) -> dict | None:
    try:
        return _read(path)
    except (OSError, ValueError):
        return None


def live_claim(unit_dir: Path, stale_s: float | None = None) -> bool:
    """Is the unit ``unit_dir`` claimed by a live process? (``Store.clean_stale`` spares its temporary folder.)"""
    path = claim_path(unit_dir)
    return path.exists() and stale_reason(path, stale_s) is None


# ------------------------------------------------------------------------------------------- the filesystem
def check_exclusive_create(root: Path) -> bool:
    """Does ``O_CREAT | O_EXCL`` work in ``root``? Creates one probe file twice: the second must fail. Raises a
    one-line ``SftnbError`` when it does not and the run has several processes; warns and returns False when it
    has one."""
    probe = root / f".claims-selftest-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    ok = True
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        try:
            os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            ok = False
        except FileExistsError:
            pass
    except OSError:
        ok = False
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    if ok:
        return True
    msg = (f"the results store {root} is on a filesystem where exclusive file creation (O_EXCL) does not work, "
           f"so processes cannot claim units")
    if world()[1] > 1:
        raise SftnbError(f"{msg}: put run.out_dir (or --out) on a local or NFSv3+ filesystem")
    warnings.warn(f"{msg}; fine for this single-process run, but never share it between processes",
                  RuntimeWarning, stacklevel=3)
    return False


def clean_stale_claims(root: Path, stale_s: float | None = None) -> int:
    """Remove stale claim files (and leftover broken-claim files) under ``root/<kind>/``."""
    n = 0
    for path in root.glob(f"*/.*{SUFFIX}"):
        if unit_of_claim(path) and break_stale(path, stale_s):
            n += 1
    for trash in root.glob(f"*/.*{SUFFIX}.stale-*"):
        with contextlib.suppress(OSError):
            trash.unlink()
    return n
