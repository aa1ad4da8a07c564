"""Preemption: a flag set by the signal, acted on at a safe point, then requeue.

SLURM (and submitit's ``--signal=USR2@T``) warns a job before killing it. Checkpointing inside the
signal handler would save whatever half-done step the interpreter was in, so the handler only sets
a flag; the work loop checks it between steps, saves a consistent checkpoint and calls
``requeue_and_exit``. The requeued job starts the same command again and resumes from that
checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from typing import Any

import submitit

__all__ = ["PreemptionFlag", "Preempted", "requeue_and_exit", "RequeueableJob"]

log = logging.getLogger(__name__)


class Preempted(Exception):
    """Raised by a work loop after it saved its state because the preemption flag was set."""


class PreemptionFlag:
    """Becomes set when one of ``signals`` arrives (default: USR2, submitit's preemption signal)."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGUSR2,)):
        self.signals = signals
        self.received: int | None = None

    def install(self) -> PreemptionFlag:
        """Take over the signals (replacing submitit's handler, which would checkpoint mid-step)."""
        for sig in self.signals:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame) -> None:
        self.received = signum
        log.warning(
            "received %s: will checkpoint and requeue at the next safe point", signal.Signals(signum).name
        )

    def is_set(self) -> bool:
        return self.received is not None

    def set(self) -> None:
        """Set the flag by hand (tests, or a rank told by another rank)."""
        self.received = self.received or signal.SIGUSR2


def _own_job_id() -> str | None:
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def requeue_and_exit(is_main: bool = True, job_id: str | None = None, code: int = 0) -> None:
    """Requeue this SLURM job (from one task only) and leave.

    Outside SLURM there is nothing to requeue: the process exits and the launcher re-runs it.
    ``SystemExit`` is deliberately not an ``Exception``: submitit writes no result for the job,
    so the requeued run executes the same function again.
    """
    job_id = job_id or _own_job_id()
    if is_main and job_id:
        subprocess.run(["scontrol", "requeue", str(job_id)], check=True, timeout=60)
        log.warning("requeued job %s", job_id)
    sys.exit(code)


class RequeueableJob(submitit.helpers.Checkpointable):
    """Base for long submitit jobs that survive preemption and time limits.

    Subclasses implement ``run(flag, *args, **kwargs)``: do the work in units, check
    ``flag.is_set()`` between them, and when it is set save state (e.g. with
    ``hpc.checkpoint.CheckpointManager``) and raise ``Preempted``. The base then requeues the job
    from one rank and exits; the requeued job calls ``run`` again, which resumes from the saved
    state. If the signal comes before ``run`` starts, submitit's own handler resubmits the job.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from hpc.env import detect_env

        flag = PreemptionFlag().install()
        try:
            return self.run(flag, *args, **kwargs)
        except Preempted:
            requeue_and_exit(is_main=detect_env().is_main)
