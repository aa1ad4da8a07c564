"""Chain the loop's steps on SLURM with ``afterok`` dependencies (submitit), so nothing has to
stay alive on the login node: each train segment waits for the clustering before it, each
clustering for its segment. Preempted jobs requeue themselves and their dependants wait.

While the chain's next job is queued or running, another launcher on the run is refused
(``chain_in_use``); once the chain is broken (a job failed or was cancelled), re-running the
launcher cancels the jobs stuck behind it and resubmits from the first unfinished step.
"""

from __future__ import annotations

import logging
import subprocess
import time
from dataclasses import replace

from dcssl.paths import RunPaths
from dcssl.pipeline.state import RunState
from dcssl.pipeline.steps import Step, is_done, run_stage
from dcssl.runlock import children_under, record_jobs
from hpc.lock import FileLock
from hpc.queue import has_queue, live_jobs
from hpc.submit import ExecutorConfig, make_executor

__all__ = ["live_jobs", "chain_in_use", "submit_chain", "wait_chain"]

log = logging.getLogger(__name__)

_BROKEN = ("DependencyNeverSatisfied",)


def _cancel_stale(pending: list[Step], state: RunState) -> None:
    """Cancel jobs of pending steps still queued behind a broken link. The chain's head is not
    healthy here (``chain_in_use`` refuses the launcher otherwise), so none of them can run."""
    ids = [i for i in (state.step(s.name).get("job_id") for s in pending) if i]
    stale = [i for i in ids if i in live_jobs(ids)]
    if stale:
        subprocess.run(["scancel", *stale], check=False, timeout=60)
        log.info("cancelled %d queued job(s) behind a broken link: %s", len(stale), stale)


def _executor_for(step: Step, paths: RunPaths, cfg: ExecutorConfig, dependency: str | None):
    if step.kind == "cluster" and not any(a.startswith("--mpi") for a in cfg.srun_args):
        cfg = replace(cfg, srun_args=[*cfg.srun_args, "--mpi=pmi2"])
    extra = {"dependency": f"afterok:{dependency}"} if dependency else {}
    return make_executor(cfg, paths.logs / "slurm" / "%j", job_name=f"dcssl-{step.name}", **extra)


def chain_in_use(pending: list[Step], state: RunState) -> str | None:
    """Who runs this run on SLURM right now: the first pending step's job while it is queued
    or running and not stuck behind a broken link (None: no healthy chain is live). A chain holds
    no lock between its jobs, so a second launcher is refused on this instead."""
    if not pending:
        return None
    record = state.step(pending[0].name)
    job_id = record.get("job_id")
    if record.get("executor") != "slurm" or not job_id or not has_queue():
        return None
    queued = live_jobs([job_id]).get(job_id)
    if not queued or queued[1] in _BROKEN:
        return None
    return f"SLURM job {job_id} ({pending[0].name}, {queued[0].lower()}) of the chain this run submitted"


def submit_chain(
    pending: list[Step],
    paths: RunPaths,
    executors: dict[str, ExecutorConfig],
    state: RunState,
    lock: FileLock | None = None,
) -> list[str]:
    """Submit the pending steps as a dependency chain; return the ids of the chain's jobs.

    The jobs get ``lock``'s id in their environment: one that starts while this launcher still
    holds the run (submitting the rest) runs under it instead of refusing its own launcher."""
    _cancel_stale(pending, state)
    with children_under(paths, lock):
        ids = _submit_all(pending, paths, executors, state)
    record_jobs(lock, ids)  # the chain keeps the run between its jobs, once we let go
    return ids


def _submit_all(pending, paths, executors, state) -> list[str]:
    previous, ids = None, []
    for step in pending:
        executor = _executor_for(step, paths, executors[step.kind], previous)
        job = executor.submit(run_stage, step.kind, str(paths.root), step.epoch)
        state.update(
            step.name,
            status="submitted",
            executor="slurm",
            job_id=job.job_id,
            log=str(job.paths.stderr).replace("%t", "0"),
            after=previous,
        )
        log.info(
            "submitted %s as job %s%s", step.name, job.job_id, f" (after {previous})" if previous else ""
        )
        previous = job.job_id
        ids.append(job.job_id)
    return ids


def wait_chain(
    pending: list[Step], paths: RunPaths, state: RunState, poll_s: float = 5.0, timeout_s: float | None = None
) -> bool:
    """Wait until every pending step is done (True) or its job left the queue unfinished."""
    started = time.time()
    while True:
        remaining = []
        for step in pending:
            if not is_done(paths, step):
                remaining.append(step)
            elif state.step(step.name).get("status") != "done":
                state.update(step.name, status="done")
        if not remaining:
            return True
        ids = [state.step(s.name).get("job_id") for s in remaining]
        live = live_jobs([i for i in ids if i])
        head = remaining[0]
        head_id = state.step(head.name).get("job_id")
        if head_id not in live and not is_done(paths, head):
            time.sleep(2 * poll_s)  # a job that just finished may still be writing its marker
            if not is_done(paths, head):
                state.update(head.name, status="failed")
                log.error(
                    "%s (job %s) ended without finishing; see %s",
                    head.name,
                    head_id,
                    state.step(head.name).get("log"),
                )
                return False
        if timeout_s is not None and time.time() - started > timeout_s:
            return False
        time.sleep(poll_s)
