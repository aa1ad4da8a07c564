"""One run directory, one launcher: the run lock (``RUN/run.lock``, see ``hpc.lock``).

A launcher holds it while it runs; each stage job takes it for its own lifetime. Jobs started by
the launcher that holds it (local steps) find the holder's id in ``DCSSL_RUN_LOCK`` and run under
their parent's lock; a SLURM chain is guarded between its jobs by its live queue entries (see
``dcssl.pipeline.slurm.chain_in_use``), because no process of it is alive while it waits.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from dcssl.paths import RunPaths
from hpc.lock import FileLock, LockHeld, describe_holder, holder_id

__all__ = ["RunInUse", "hold_run", "hold_stage", "child_env", "ENV"]

log = logging.getLogger(__name__)

ENV = "DCSSL_RUN_LOCK"
"""Set for a launcher's children: the id of the lock holder they run under."""

_held: dict[str, FileLock] = {}  # this process's locks, so nested stages do not refuse themselves


class RunInUse(RuntimeError):
    """Another launcher or job works on this run; the message says who and what to do."""


def _refusal(paths: RunPaths, holder: dict) -> RunInUse:
    return RunInUse(
        f"{paths.root}: run in use by {describe_holder(holder)}; wait for it to finish or stop it "
        f"(a lock left by a dead process is taken over)"
    )


def _under_parent(paths: RunPaths, holder: dict) -> bool:
    return bool(holder) and os.environ.get(ENV) == f"{paths.root.resolve()}|{holder_id(holder)}"


def _acquire(paths: RunPaths, what: str, finishing, deadline: float, fields: dict) -> FileLock | None:
    """The lock, or None when our parent holds it for us; RunInUse when someone else does."""
    while True:
        try:
            return FileLock(paths.lock).acquire(what=what, **fields)
        except LockHeld as held:
            holder = held.holder
        if _under_parent(paths, holder):
            return None
        if not (finishing and finishing(holder)) or time.monotonic() > deadline:
            raise _refusal(paths, holder)
        time.sleep(1.0)


@contextmanager
def hold_run(
    paths: RunPaths,
    what: str,
    finishing: Callable[[dict], bool] | None = None,
    grace_s: float = 300.0,
    **fields,
) -> Iterator[FileLock | None]:
    """Hold the run lock for the block, or raise ``RunInUse`` naming its holder.

    ``finishing(holder)``: True for a holder that is about to let go (a job whose step is done
    and that is still writing its summary); then wait up to ``grace_s`` instead of refusing.
    Yields None when a parent launcher holds the lock on this process's behalf.
    """
    key = str(paths.root.resolve())
    if key in _held:
        yield _held[key]
        return
    lock = _acquire(paths, what, finishing, time.monotonic() + grace_s, fields)
    if lock is None:
        yield None
        return
    if lock.previous and lock.previous.get("pid") and "released" not in lock.previous:
        log.info("run lock: taking over from %s, which has gone", describe_holder(lock.previous))
    _held[key] = lock
    try:
        yield lock
    finally:
        del _held[key]
        lock.release()


def child_env(paths: RunPaths, lock: FileLock | None) -> dict[str, str]:
    """Environment entries that let a launcher's child jobs run under its lock."""
    if lock is None:  # we run under a parent's lock ourselves: pass its id on
        return {ENV: os.environ[ENV]} if ENV in os.environ else {}
    return {ENV: f"{paths.root.resolve()}|{holder_id(lock.holder)}"}


@contextmanager
def hold_stage(run_dir, step_name: str) -> Iterator[FileLock | None]:
    """A stage job's hold on its run (call on rank 0 only); a missing run directory is left
    to the stage to report."""
    paths = RunPaths(Path(run_dir))
    if not paths.root.is_dir():
        yield None
        return
    job = os.environ.get("SLURM_JOB_ID")
    what = f"{step_name} job {job}" if job else f"{step_name} job"
    with hold_run(paths, what, step=step_name, **({"job_id": job} if job else {})) as lock:
        yield lock
