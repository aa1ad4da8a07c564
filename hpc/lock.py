"""An exclusive ``fcntl.flock`` on a file that says who holds it.

The kernel drops a flock when its holder dies (``kill -9`` included), so a lock left behind by a
dead process is simply taken over; the file keeps the holder's host, pid and start time (one JSON
line) so that a refused caller can say who is in the way. flock is advisory and only as good as
the filesystem: local disks, Lustre mounted with ``-o flock``, GPFS, CephFS and NFSv4 lock across
nodes; NFSv3 locks only through lockd and not at all when mounted ``nolock``.

Exclusive holders (``acquire``) write the record; shared holders (``acquire_shared``: many at
once, e.g. the elements of an array) only keep exclusive ones out.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "FileLock",
    "LockHeld",
    "read_holder",
    "describe_holder",
    "holder_id",
    "is_locked",
    "process_start",
    "process_alive",
]


class LockHeld(RuntimeError):
    """Another process holds the lock; ``holder`` is what it wrote (possibly empty)."""

    def __init__(self, path: Path, holder: dict):
        super().__init__(f"{path}: held by {describe_holder(holder)}")
        self.path, self.holder = path, holder


def holder_id(holder: dict) -> str:
    """A holder's identity, stable while it lives: ``host:pid:since``."""
    return f"{holder.get('host')}:{holder.get('pid')}:{holder.get('since')}"


def read_holder(path: Path, attempts: int = 5) -> dict:
    """What the last holder wrote; {} when there is nothing readable (never raises).

    A read that overlaps the holder's in-place rewrite can still see a page half-copied (a
    buffered read is not atomic against a write on Linux: 1 in ~3,000 polls in CI), so an
    unparsable or empty record is read again, a millisecond later, a few times."""
    for attempt in range(attempts):
        try:
            holder = json.loads(Path(path).read_bytes().decode("utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            holder = None
        if isinstance(holder, dict) and holder:
            return holder
        if attempt + 1 < attempts:
            time.sleep(0.001)
    return {}


def describe_holder(holder: dict) -> str:
    """``pid 12 on host n1 since 2026-12-02 01:04:30 UTC (launch train), running train-0001 as
    pid 14``: ``what`` and ``running``/``child_pid`` are optional fields of the record."""
    if not holder.get("pid"):
        return "another process (it has not said who yet)"
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(holder.get("since", 0))))
    what = f" ({holder['what']})" if holder.get("what") else ""
    child = f", running {holder['running']} as pid {holder.get('child_pid')}" if holder.get("running") else ""
    return f"pid {holder['pid']} on host {holder.get('host', '?')} since {since}{what}{child}"


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def is_locked(path: Path) -> bool:
    """Whether some process holds the lock on ``path`` right now (False when there is no file)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        free = _try_flock(fd)
        return not free
    finally:
        os.close(fd)  # closing drops the probe's own lock, if it got one


def process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot; None when it is gone): with
    the pid, an identity a reused pid does not share."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def process_alive(pid: int, start: str | None) -> bool:
    """Whether the process ``pid`` that started at ``start`` (``process_start``) still runs."""
    now = process_start(pid)
    return now is not None and (start is None or now == start)


def _open_for_lock(path: Path) -> int:
    """The lock file for reading and writing, created if missing; read-only where we may not
    write it (a shared hold on a run one cannot write)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except PermissionError:
        return os.open(path, os.O_RDONLY)


class FileLock:
    """``with FileLock(path).acquire(what="…")``: hold ``path`` exclusively or raise ``LockHeld``.

    ``previous`` is what the last holder wrote (None if none); without a ``released`` time in it,
    that holder died holding the lock and this one took it over.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: int | None = None
        self.holder: dict = {}
        self.previous: dict | None = None
        self.shared = False

    def acquire(self, admit: Callable[[dict], dict] | None = None, **info) -> FileLock:
        """Hold exclusively. ``admit(previous record)`` may refuse (raise) before anything is
        written, so the previous record stays as it was; what it returns joins the new record."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _try_flock(fd):
            os.close(fd)
            raise LockHeld(self.path, read_holder(self.path))
        self.previous = read_holder(self.path) or None
        try:
            carried = admit(self.previous or {}) if admit else {}
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self.holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": round(time.time(), 3)}
        self.update(**carried, **info)
        return self

    def acquire_shared(self) -> FileLock:
        """Hold shared (others may too; no exclusive holder can start meanwhile), or raise
        ``LockHeld`` naming the exclusive holder. Writes nothing; ``previous`` is the record."""
        fd = _open_for_lock(self.path)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(self.path, read_holder(self.path)) from None
        self.fd, self.shared = fd, True
        self.previous = read_holder(self.path) or None
        return self

    def update(self, **info) -> None:
        """Rewrite the holder record with more to say (e.g. the step now running)."""
        assert self.fd is not None, "update() needs the lock"
        self.holder.update(info)
        data = (json.dumps(self.holder, sort_keys=True) + "\n").encode()
        # Never empty or torn for a reader polling it: the new record over the old one, padded
        # with blanks (valid JSON whitespace) to the old length, then cut to its own length.
        old = os.fstat(self.fd).st_size
        os.pwrite(self.fd, data + b" " * max(0, old - len(data)), 0)
        os.ftruncate(self.fd, len(data))

    def release(self) -> None:
        """Let go, marking the record released (a record without the mark is a holder that died)."""
        if self.fd is not None:
            if not self.shared:
                self.update(released=round(time.time(), 3))
            os.close(self.fd)  # the record stays: the next holder overwrites it
            self.fd = None

    def __enter__(self) -> FileLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
