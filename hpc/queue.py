"""What the SLURM queue still holds: job id → (state, reason) for jobs not yet ended."""

from __future__ import annotations

import shutil
import subprocess

__all__ = ["live_jobs", "has_queue"]

# states a job id may still show in squeue -j once it can no longer run
_ENDED = {
    "COMPLETED",
    "CANCELLED",
    "FAILED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
}


def has_queue() -> bool:
    """Whether this machine can ask SLURM (squeue on the PATH)."""
    return shutil.which("squeue") is not None


def live_jobs(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    """job id → (state, reason) for jobs still known to the queue and not ended (pending,
    running, …). An array's id stands for its elements: ``123`` is live while any of them is."""
    if not job_ids or not has_queue():
        return {}
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i|%T|%r", "-j", ",".join(job_ids)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    jobs: dict[str, tuple[str, str]] = {}
    for line in out.stdout.splitlines():
        job_id, state, reason = (line.split("|") + ["", ""])[:3]
        if state.strip() not in _ENDED:
            jobs.setdefault(job_id.strip(), (state.strip(), reason.strip()))
            array_id = job_id.strip().split("_")[0]
            jobs.setdefault(array_id, (state.strip(), reason.strip()))
    return jobs
