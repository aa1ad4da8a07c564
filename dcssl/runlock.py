"""One run directory, one writer at a time: the run lock (``RUN/run.lock``, see ``hpc.lock``).

- A launcher holds it exclusively while it runs; each stage job takes it for its own lifetime.
  Jobs started by the launcher that holds it find the holder's id in ``DCSSL_RUN_LOCK`` and run
  under their parent's lock (local steps also inherit the locked descriptor).
- What a holder leaves running when it lets go (or dies) is its *lease*, kept in the record:
  ``jobs`` (SLURM job or array ids: a chain, a tile array) and ``pids`` (local processes, e.g.
  the tile array's elements). While any of them is queued, running or alive, another launcher
  is refused; a job of the lease is admitted and carries the lease on, so a chain between its
  jobs (no process of it alive) and an array between its elements stay covered.
- Tile array elements hold it *shared* (``hold_element``): many at once, none while a writer
  that is not their parent holds it.
- ``keep_held()``: locks taken inside are kept until it ends (the demo, across its stages).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from dcssl.paths import RunPaths
from hpc.lock import FileLock, LockHeld, describe_holder, holder_id, process_alive, process_start
from hpc.queue import ENDED, ENDED_OK, job_states

__all__ = [
    "RunInUse",
    "hold_run",
    "hold_stage",
    "hold_element",
    "keep_held",
    "child_env",
    "children_under",
    "record_jobs",
    "record_pids",
    "ENV",
    "JOBS_ENV",
]

log = logging.getLogger(__name__)

ENV = "DCSSL_RUN_LOCK"
"""Set for a launcher's children: the id of the lock holder they run under."""

JOBS_ENV = "DCSSL_RUN_JOBS"
"""Set by ``python -m dcssl.holdrun`` for its command: a file of SLURM job ids for its lease."""

_held: dict[str, FileLock] = {}  # this process's locks, so nested stages do not refuse themselves
_kept: list[tuple[ExitStack, str]] = []  # the open keep_held() blocks of this process, and their name
_BROKEN = ("DependencyNeverSatisfied",)  # queued behind a failed job: it will never run


class RunInUse(RuntimeError):
    """Another launcher or job works on this run; the message says who and what to do."""


def _refusal(paths: RunPaths, holder: dict, lease: str = "") -> RunInUse:
    if lease:
        who = f"{lease}, left running by {describe_holder(holder)}"
    elif holder.get("released"):  # the lock is held, the record's writer let go: shared holders
        who = f"tile array elements (shared holds) started by {describe_holder(holder)}"
    else:
        who = describe_holder(holder)
    return RunInUse(
        f"{paths.root}: run in use by {who}; wait for it to finish or stop it "
        f"(a lock left by a dead process is taken over)"
    )


def _under_parent(paths: RunPaths, holder: dict) -> bool:
    return bool(holder) and os.environ.get(ENV) == f"{paths.root.resolve()}|{holder_id(holder)}"


def _own_jobs() -> set[str]:
    """This process's SLURM job and array ids (empty outside SLURM)."""
    return {os.environ[k] for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID") if os.environ.get(k)}


def _live_lease(record: dict) -> str:
    """What of the record's lease still runs, in words ("" when nothing does)."""
    live = _live_chain([str(j) for j in record.get("jobs") or []])
    if live:
        return "SLURM job(s) " + ", ".join(f"{j} ({s[0].lower()})" for j, s in live.items())
    if record.get("host") not in (None, socket.gethostname()):
        return ""  # processes of another host cannot be checked from here; the flock guards them
    pids = record.get("pids") or {}
    alive = [p for p, start in pids.items() if process_alive(int(p), start)]
    return "local process(es) pid " + ", ".join(alive) if alive else ""


def _live_chain(jobs: list[str]) -> dict[str, tuple[str, str]]:
    """The lease's jobs that still hold the run (see chain_holders)."""
    return chain_holders(jobs, job_states(jobs))


def chain_holders(jobs: list[str], states: dict[str, tuple[str, str]]) -> dict[str, tuple[str, str]]:
    """The lease's jobs (in submission order, ``states`` from the queue, ended ones included) that
    still hold the run: running, or queued for a reason other than a dependency. A job waiting on
    a dependency holds it while an earlier job of the lease is live, or when the job just before it
    has COMPLETED — the seconds before the scheduler starts the next link of an afterok chain.
    Behind a cancelled or failed link it never runs, so it holds nothing."""
    live: dict[str, tuple[str, str]] = {}
    for before, job in zip([None, *jobs], jobs):
        state = states.get(job)
        if not state or state[0] in ENDED or state[1] in _BROKEN:
            continue
        waits = state[1] == "Dependency"
        if not waits or live or (before is not None and states.get(before, ("",))[0] == ENDED_OK):
            live[job] = state
    return live


def _admit(paths: RunPaths) -> Callable[[dict], dict]:
    """The check a new exclusive holder passes: no live lease but its own; its own is carried on."""

    def admit(previous: dict) -> dict:
        lease = _live_lease(previous)
        if not lease:
            return {}
        if _own_jobs() & {str(j) for j in previous.get("jobs") or []}:
            return {"jobs": previous["jobs"]}  # a job of the chain: the rest of it stays covered
        raise _refusal(paths, previous, lease)

    return admit


def _acquire(paths: RunPaths, what: str, finishing, deadline: float, fields: dict) -> FileLock | None:
    """The lock, or None when our parent holds it for us; RunInUse when someone else does."""
    while True:
        try:
            return FileLock(paths.lock).acquire(admit=_admit(paths), what=what, **fields)
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
    what = _kept[-1][1] if _kept else what  # a kept lock is named after the whole command
    lock = _acquire(paths, what, finishing, time.monotonic() + grace_s, fields)
    if lock is None:
        yield None
        return
    if lock.previous and lock.previous.get("pid") and "released" not in lock.previous:
        log.info("run lock: taking over from %s, which has gone", describe_holder(lock.previous))
    _held[key] = lock
    if _kept:  # released when the keep_held() block ends, not with this one
        _kept[-1][0].callback(_let_go, key, lock)
        yield lock
        return
    try:
        yield lock
    finally:
        _let_go(key, lock)


def _let_go(key: str, lock: FileLock) -> None:
    _held.pop(key, None)
    lock.release()


@contextmanager
def keep_held(what: str) -> Iterator[None]:
    """Run locks taken in this block are held until it ends, as ``what`` (a command of several
    stages: no other launcher gets in between them)."""
    with ExitStack() as stack:
        _kept.append((stack, what))
        try:
            yield
        finally:
            _kept.pop()


def child_env(paths: RunPaths, lock: FileLock | None) -> dict[str, str]:
    """Environment entries that let a launcher's child jobs run under its lock."""
    if lock is None:  # we run under a parent's lock ourselves: pass its id on
        return {ENV: os.environ[ENV]} if ENV in os.environ else {}
    return {ENV: f"{paths.root.resolve()}|{holder_id(lock.holder)}"}


@contextmanager
def children_under(paths: RunPaths, lock: FileLock | None) -> Iterator[None]:
    """Within the block, jobs started through the environment (submitit: local processes,
    sbatch) run under ``lock``, as ``child_env`` says."""
    saved = dict(os.environ)
    os.environ.update(child_env(paths, lock))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def record_jobs(lock: FileLock | None, job_ids: list[str]) -> None:
    """Add SLURM jobs (or arrays) to the holder's lease: they keep the run once it lets go.
    Under a parent's hold (``lock`` None) they go to the parent's job file, if it keeps one."""
    if lock is None and os.environ.get(JOBS_ENV) and job_ids:
        with open(os.environ[JOBS_ENV], "a") as jobs:
            jobs.writelines(f"{j}\n" for j in job_ids)
    if lock is not None and job_ids:
        known = [str(j) for j in lock.holder.get("jobs") or []]
        lock.update(jobs=known + [str(j).split("_")[0] for j in job_ids if str(j) not in known])


def record_pids(lock: FileLock | None, pids: list[int]) -> None:
    """Set the local processes of the holder's lease (those still running)."""
    if lock is not None:
        lock.update(pids={str(p): process_start(p) for p in pids})


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


@contextmanager
def hold_element(run_dir) -> Iterator[FileLock | None]:
    """An array element's shared hold on its run: refused (``RunInUse``) while a writer other
    than its own launcher holds it, or while another holder's lease runs."""
    paths = RunPaths(Path(run_dir))
    if not paths.root.is_dir():
        yield None
        return
    try:
        lock = FileLock(paths.lock).acquire_shared()
    except LockHeld as held:
        if _under_parent(paths, held.holder):
            yield None
            return
        raise _refusal(paths, held.holder) from None
    with lock:
        _check_element_lease(paths, lock.previous or {})
        yield lock


def _check_element_lease(paths: RunPaths, record: dict) -> None:
    lease = _live_lease(record)
    ours = _own_jobs() & {str(j) for j in record.get("jobs") or []}
    local = os.environ.get("SUBMITIT_LOCAL_JOB_ID") in (record.get("pids") or {})
    if lease and not (ours or local):
        raise _refusal(paths, record, lease)
