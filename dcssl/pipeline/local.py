"""Run the loop's steps on this machine: the same task functions, as local processes.

Train segments with G processes start through torchrun (DDP on gloo or nccl), clustering with R
ranks through mpiexec — the stage entry points SLURM runs (``python -m dcssl.train|cluster``),
started differently. Commands are argument
lists, never shell strings.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from dcssl.cluster.health import single_label_reason
from dcssl.epochs.labels import read_stats
from dcssl.paths import RunPaths
from dcssl.pipeline.state import RunState
from dcssl.pipeline.steps import Step, is_done, stage_argv
from dcssl.runlock import child_env
from hpc.lock import FileLock
from hpc.mpi import mpiexec
from hpc.submit import ExecutorConfig

__all__ = ["StepFailed", "step_command", "run_local"]

log = logging.getLogger(__name__)


class StepFailed(RuntimeError):
    """A step's processes exited non-zero; the message names the log."""


def step_command(step: Step, run_dir: Path, executor: ExecutorConfig) -> list[str]:
    """The argv that runs ``step`` with ``executor.tasks_per_node`` processes."""
    task = stage_argv(step, run_dir)
    procs = executor.tasks_per_node
    if procs == 1:
        return [sys.executable, *task]
    if step.kind == "train":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={procs}",
            *task,
        ]
    return [mpiexec(), "-n", str(procs), sys.executable, *task]


def _refuse_single_label(step: Step, paths: RunPaths, state: RunState) -> None:
    """A train segment on one label learns nothing: stop before starting it, reason on the console."""
    stats = read_stats(paths.root, step.epoch - 1) if step.kind == "train" and step.epoch > 0 else {}
    if not stats:
        return
    reason = single_label_reason(stats, step.epoch - 1)
    if reason:
        state.update(step.name, status="refused", reason=reason)
        raise StepFailed(f"{step.name} refused: {reason}")


def _run_step(
    step: Step, paths: RunPaths, executor: ExecutorConfig, state: RunState, lock: FileLock | None
) -> None:
    """Run one step under this launcher's run lock: the child inherits the locked descriptor (a
    step that outlives a killed launcher still holds the run) and its id (so it does not refuse
    itself); its pid and host go to state.json, so ``status`` can tell running from dead."""
    _refuse_single_label(step, paths, state)
    log_file = RunState.log_path(paths, step.name)
    log_file.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(executor.cpus_per_task), PYTHONUNBUFFERED="1")
    env.update(child_env(paths, lock))
    started = time.time()
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(
            step_command(step, paths.root, executor),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            pass_fds=(lock.fd,) if lock is not None and lock.fd is not None else (),
        )
        host = socket.gethostname()
        state.update(
            step.name, status="running", executor="local", log=str(log_file), pid=proc.pid, host=host
        )
        if lock is not None:
            lock.update(running=step.name, child_pid=proc.pid)
        code = proc.wait()
    seconds = round(time.time() - started, 2)
    if code != 0 or not is_done(paths, step):
        state.update(step.name, status="failed", exit_code=code, seconds=seconds)
        raise StepFailed(f"{step.name} failed (exit {code}){_error_line(log_file)}; see {log_file}")
    state.update(step.name, status="done", seconds=seconds)


def _error_line(log_file: Path) -> str:
    """': <the step's one-line error>' when its log ends with one (a full disk, damaged input)."""
    with open(log_file, "rb") as handle:
        handle.seek(max(handle.seek(0, os.SEEK_END) - 8192, 0))
        lines = handle.read().decode(errors="replace").splitlines()
    last = next((line for line in reversed(lines) if line.strip()), "")
    for prefix in ("error: ", "dcssl.train.segment_errors.SegmentError: ", "hpc.integrity.DamagedFile: "):
        if last.startswith(prefix):
            return ": " + last[len(prefix) :]
    return ""


def run_local(
    steps: list[Step],
    paths: RunPaths,
    executors: dict[str, ExecutorConfig],
    state: RunState,
    lock: FileLock | None = None,
) -> None:
    """Run the pending steps in order; stop at the first failure (re-running resumes there).

    A progress bar (steps done, elapsed, ETA) goes to stderr; each step's own progress lines
    (loss, images/s, ETA within the epoch) are in its log under RUN/logs/.
    """
    from tqdm import tqdm

    with tqdm(total=len(steps), unit="step", desc="DeepCluster loop", dynamic_ncols=True) as bar:
        for i, step in enumerate(steps, 1):
            bar.set_postfix_str(f"{step.name} (log: {RunState.log_path(paths, step.name)})")
            log.info("step %d/%d: %s", i, len(steps), step.name)
            _run_step(step, paths, executors[step.kind], state, lock)
            bar.update()
