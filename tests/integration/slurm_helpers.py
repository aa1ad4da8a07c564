"""Helpers for tests that submit real jobs to the live SLURM cluster (see tests/conftest.py).

Everything polls `scontrol show job` (kept by slurmctld for MinJobAge=300 s after a job ends),
falling back to `sacct` once slurmctld has forgotten the job.
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "TERMINAL_STATES",
    "SbatchResult",
    "sbatch",
    "run_sbatch_and_wait",
    "show_job",
    "job_state",
    "wait_for_state",
    "wait_until",
    "wait_for_job_end",
    "scancel",
]

TERMINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "SPECIAL_EXIT",
    }
)


def _run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def show_job(job_id: str) -> dict[str, str]:
    """`scontrol show job -o JOBID` as a dict (first record: for an array, the first element);
    {} when slurmctld no longer knows the job."""
    proc = _run(["scontrol", "show", "job", "-o", str(job_id)])
    if proc.returncode != 0 or not proc.stdout.strip():
        return {}
    first = proc.stdout.strip().splitlines()[0]
    # values may contain spaces only in Command/WorkDir-like fields we do not use; key=value tokens
    return dict(tok.split("=", 1) for tok in first.split() if "=" in tok)


def show_job_records(job_id: str) -> list[dict[str, str]]:
    """Every record of `scontrol show job -o JOBID` (one per array element)."""
    proc = _run(["scontrol", "show", "job", "-o", str(job_id)])
    if proc.returncode != 0:
        return []
    return [
        dict(tok.split("=", 1) for tok in line.split() if "=" in tok)
        for line in proc.stdout.strip().splitlines()
        if line.strip()
    ]


def job_state(job_id: str) -> str:
    """The job's state (RUNNING, COMPLETED, ...); 'UNKNOWN' when neither slurmctld nor sacct knows it."""
    state = show_job(job_id).get("JobState")
    if state:
        return state
    proc = _run(["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "State"])
    lines = [ln.split()[0] for ln in proc.stdout.splitlines() if ln.strip()]
    return lines[0] if lines else "UNKNOWN"


def wait_until(predicate, timeout: float, poll_s: float = 0.5, what: str = "condition"):
    """Poll predicate() until it returns a truthy value; TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll_s)


def wait_for_state(job_id: str, states: Iterable[str], timeout: float = 120, poll_s: float = 0.5) -> str:
    """Wait until the job is in one of `states` and return it. Raises TimeoutError, or
    RuntimeError when the job reaches another terminal state first."""
    wanted = set(states)
    seen = ["?"]

    def check():
        seen[0] = job_state(job_id)
        if seen[0] in wanted:
            return seen[0]
        if seen[0] in TERMINAL_STATES:
            raise RuntimeError(f"job {job_id} ended {seen[0]} while waiting for {sorted(wanted)}")
        return None

    try:
        return wait_until(check, timeout, poll_s, what=f"job {job_id} to reach {sorted(wanted)}")
    except TimeoutError as err:
        raise TimeoutError(f"{err} (last state {seen[0]})") from None


def wait_for_job_end(job_id: str, timeout: float = 120, poll_s: float = 0.5) -> str:
    """Wait for a terminal state; on timeout cancel the job and raise TimeoutError."""
    try:
        return wait_for_state(job_id, TERMINAL_STATES, timeout, poll_s)
    except TimeoutError:
        scancel(job_id)
        raise


def scancel(job_id: str, signal: str | None = None, batch: bool = False) -> None:
    """Cancel a job, or only send it `signal` (to its steps; also the batch shell if batch=True)."""
    cmd = ["scancel"]
    if signal:
        cmd.append(f"--signal={signal}")
    if batch:
        cmd.append("--batch")
    _run(cmd + [str(job_id)])


def sbatch(script_text: str, folder: Path, args: Iterable[str] = ()) -> tuple[str, Path, Path]:
    """Write `script_text` to folder/job.sbatch and submit it; returns (job_id, stdout, stderr paths).

    `#SBATCH` lines in the script work as usual; `args` go on the sbatch command line.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "job.sbatch"
    if not script_text.startswith("#!"):
        script_text = "#!/bin/bash\n" + script_text
    script.write_text(script_text)
    out, err = folder / "job.out", folder / "job.err"
    proc = _run(
        ["sbatch", "--parsable", f"--chdir={folder}", f"--output={out}", f"--error={err}", *args, str(script)]
    )
    if proc.returncode != 0:
        raise RuntimeError(f"sbatch failed ({proc.returncode}): {proc.stderr.strip()}")
    job_id = proc.stdout.strip().split(";")[0]
    if not re.fullmatch(r"\d+", job_id):
        raise RuntimeError(f"sbatch printed no job id: {proc.stdout!r}")
    return job_id, out, err


@dataclass
class SbatchResult:
    """Outcome of a batch job. Unpacks as ``state, stdout = run_sbatch_and_wait(...)``."""

    job_id: str
    state: str
    stdout: str
    stderr: str

    def __iter__(self) -> Iterator[str]:
        return iter((self.state, self.stdout))

    def describe(self) -> str:
        """For assertion messages: state, job id and both outputs."""
        return f"job {self.job_id} ended {self.state}\n--- stdout:\n{self.stdout}\n--- stderr:\n{self.stderr}"


def run_sbatch_and_wait(
    script_text: str, tmp_path: Path, timeout: float = 120, args: Iterable[str] = ()
) -> SbatchResult:
    """Submit a batch script, wait for it to end (cancelling it after `timeout` s) and return
    its final state (e.g. 'COMPLETED') and the text of its stdout (stderr: `.stderr`)."""
    job_id, out, err = sbatch(script_text, Path(tmp_path), args)
    state = wait_for_job_end(job_id, timeout)
    read = lambda p: p.read_text(errors="replace") if p.exists() else ""  # noqa: E731
    return SbatchResult(job_id=job_id, state=state, stdout=read(out), stderr=read(err))
