"""Where the loop stands: each planned step's state, from markers, state.json and the queue."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

from dcssl.config import load_run_config
from dcssl.paths import RunPaths
from dcssl.pipeline.state import RunState
from dcssl.pipeline.steps import is_done, plan
from hpc.lock import is_locked

__all__ = ["loop_progress"]


def _queue_states(job_ids: list[str]) -> dict[str, tuple[str, str]]:
    if not job_ids or shutil.which("squeue") is None:
        return {}
    from dcssl.pipeline.slurm import live_jobs

    return live_jobs(job_ids)


def _local_alive(paths: RunPaths, record: dict) -> bool:
    """A local step's process: alive on this host (and still a dcssl stage, not a reused pid);
    seen from another host, alive while the run lock is held."""
    if record.get("host") != socket.gethostname():
        return is_locked(paths.lock)
    try:
        cmdline = Path(f"/proc/{int(record.get('pid', 0))}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    return b"dcssl." in cmdline


def loop_progress(run_dir: Path) -> dict:
    """``{"steps": [{"name", "status", "job_id", "log"}], "done": n}``; status is one of
    done | running | pending | blocked (behind a failed job) | failed | interrupted (a local
    step whose process is gone without finishing) | not started."""
    paths = RunPaths(Path(run_dir))
    if not paths.state.is_file():
        return {"steps": [], "done": 0}
    epochs = load_run_config(run_dir).loop.epochs
    state = RunState(paths)
    recorded = {s.name: state.step(s.name) for s in plan(epochs)}
    live = _queue_states([r["job_id"] for r in recorded.values() if r.get("job_id")])
    steps = []
    for step in plan(epochs):
        record = recorded[step.name]
        queued = live.get(record.get("job_id", ""))
        if is_done(paths, step):
            status = "done"
        elif queued:
            status = (
                "blocked"
                if queued[1] == "DependencyNeverSatisfied"
                else "running"
                if queued[0] == "RUNNING"
                else "pending"
            )
        elif record.get("executor") == "local" and record.get("status") == "running":
            status = "running" if _local_alive(paths, record) else "interrupted"
        elif record.get("status") in ("failed", "submitted", "running"):
            status = "failed"  # left the queue (or its process) without finishing
        else:
            status = "not started"
        steps.append(
            {"name": step.name, "status": status, "job_id": record.get("job_id"), "log": record.get("log")}
        )
    return {"steps": steps, "done": sum(s["status"] == "done" for s in steps)}
