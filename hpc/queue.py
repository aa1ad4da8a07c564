"""What the SLURM queue still holds: job id → (state, reason) for jobs not yet ended."""

from __future__ import annotations

import shutil
import subprocess

__all__ = ["job_states", "live_jobs", "has_queue", "ENDED", "ENDED_OK"]

ENDED = {
    "COMPLETED",
    "CANCELLED",
    "FAILED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
}
"""States a job id may still show in squeue once it can no longer run."""


ENDED_OK = "COMPLETED"
"""The one ended state after which an afterok dependent will run."""


def has_queue() -> bool:
    """Whether this machine can ask SLURM (squeue on the PATH)."""
    return shutil.which("squeue") is not None


def job_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """job id → (state, reason) for every job the queue still knows, ended ones included (squeue
    keeps a finished job for MinJobAge, 300 s by default). An array's id stands for its elements,
    a live one before an ended one."""
    if not job_ids or not has_queue():
        return {}
    out = subprocess.run(
        ["squeue", "-h", "-t", "all", "-o", "%i|%T|%r", "-j", ",".join(job_ids)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    jobs: dict[str, tuple[str, str]] = {}
    for line in out.stdout.splitlines():
        job_id, state, reason = (part.strip() for part in (line.split("|") + ["", ""])[:3])
        for key in {job_id, job_id.split("_")[0]}:  # an array's id: a live element wins over ended
            if key not in jobs or (jobs[key][0] in ENDED and state not in ENDED):
                jobs[key] = (state, reason)
    return jobs


def live_jobs(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """job id → (state, reason) for jobs still known to the queue and not ended (pending,
    running, …). An array's id stands for its elements: ``123`` is live while any of them is."""
    return {j: s for j, s in job_states(job_ids).items() if s[0] not in ENDED}
