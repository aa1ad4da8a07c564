"""Executors from config: SLURM (submitit) or local processes, throttled arrays, job waiting.

One code path: a function submitted here runs the same way under ``sbatch`` (via submitit) and as
a local process, so what the tests run locally is what the cluster runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import submitit

__all__ = ["ExecutorConfig", "make_executor", "submit_array", "wait_all", "JobFailure"]

log = logging.getLogger(__name__)


@dataclass
class ExecutorConfig:
    """Where and how jobs run."""

    kind: Literal["local", "slurm"] = "local"
    """local: processes on this machine (no cluster needed); slurm: sbatch through submitit."""
    partition: str | None = None
    """SLURM partition (None: the cluster's default)."""
    account: str | None = None
    """SLURM account to charge."""
    qos: str | None = None
    """SLURM quality of service."""
    constraint: str | None = None
    """SLURM node feature constraint, e.g. a GPU model."""
    nodes: int = 1
    """Nodes per job (multi-node DDP for training)."""
    tasks_per_node: int = 1
    """Processes per node: one per GPU for training, one per MPI rank for clustering."""
    cpus_per_task: int = 1
    """CPU cores per process (data-loader workers, BLAS threads)."""
    gpus_per_node: int = 0
    """GPUs per node (0 on CPU-only partitions)."""
    mem_gb: float | None = None
    """Memory per node in GB (None: the partition default)."""
    timeout_min: int = 60
    """Wall-clock limit per job; the preemption signal arrives signal_delay_s before it."""
    signal_delay_s: int = 120
    """Seconds between USR2 and the kill at the time limit: enough to write a checkpoint."""
    max_num_timeout: int = 10
    """How many times a job may be requeued after timeouts/preemption before giving up."""
    array_parallelism: int = 32
    """At most this many array elements run at once (sbatch --array=…%N): be kind to the cluster."""
    max_array_size: int = 1000
    """Largest array one sbatch may hold (below the cluster's MaxArraySize, 1001 by default);
    more elements become several arrays run one after another."""
    srun_args: list[str] = field(default_factory=list)
    """Extra srun arguments, e.g. ["--mpi=pmi2"] for MPI jobs."""
    setup: list[str] = field(default_factory=list)
    """Shell lines run before the job (module load …, conda activate …). Written verbatim."""

    def __post_init__(self) -> None:
        for name in (
            "nodes",
            "tasks_per_node",
            "cpus_per_task",
            "timeout_min",
            "array_parallelism",
            "max_array_size",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.gpus_per_node < 0:
            raise ValueError("gpus_per_node must be ≥ 0")
        if self.kind == "local" and self.nodes > 1:
            raise ValueError("a local executor has one node; set nodes=1 or kind=slurm")


def make_executor(
    cfg: ExecutorConfig, folder: str | Path, job_name: str = "dcssl", **overrides: Any
) -> submitit.Executor:
    """A submitit executor writing logs under ``folder`` (``%j`` is the job id)."""
    folder = Path(folder)
    if cfg.kind == "local":
        executor: submitit.Executor = submitit.LocalExecutor(
            folder=folder, max_num_timeout=cfg.max_num_timeout
        )
        executor.update_parameters(
            tasks_per_node=cfg.tasks_per_node,
            gpus_per_node=cfg.gpus_per_node,
            timeout_min=cfg.timeout_min,
            signal_delay_s=cfg.signal_delay_s,
            **overrides,
        )
        return executor
    executor = submitit.SlurmExecutor(folder=folder, max_num_timeout=cfg.max_num_timeout)
    params: dict[str, Any] = dict(
        job_name=job_name,
        nodes=cfg.nodes,
        ntasks_per_node=cfg.tasks_per_node,
        cpus_per_task=cfg.cpus_per_task,
        time=cfg.timeout_min,
        signal_delay_s=cfg.signal_delay_s,
        array_parallelism=cfg.array_parallelism,
        # requeue-on-preemption needs the job to be requeueable whatever the cluster's default
        additional_parameters={"requeue": True},
    )
    optional = dict(
        partition=cfg.partition,
        account=cfg.account,
        qos=cfg.qos,
        constraint=cfg.constraint,
        srun_args=cfg.srun_args or None,
        setup=cfg.setup or None,
    )
    params.update({k: v for k, v in optional.items() if v is not None})
    if cfg.gpus_per_node:
        params["gpus_per_node"] = cfg.gpus_per_node
    if cfg.mem_gb is not None:
        params["mem"] = f"{int(cfg.mem_gb * 1024)}M"
    params.update(overrides)
    executor.update_parameters(**params)
    return executor


def submit_array(
    executor: submitit.Executor,
    fn: Callable[..., Any],
    items: Sequence[Any],
    parallelism: int,
    max_array_size: int = 1000,
    on_start: Callable[[list[submitit.Job]], None] | None = None,
) -> list[submitit.Job]:
    """Submit ``fn(item)`` for every item, at most ``parallelism`` running at once.

    On SLURM this is ``sbatch --array=0-(n-1)%parallelism`` and returns at once; more items than
    the cluster's MaxArraySize (1001 by default) become several arrays, each starting after the
    previous one ended (``afterany``), so the throttle still holds over all of them. Locally there
    is no scheduler to hold elements back, so elements are started as earlier ones finish and
    this call returns when all have ended; ``on_start(running jobs)`` is called whenever that
    set changes (e.g. to record their pids).
    """
    if not items:
        return []
    if not isinstance(executor, submitit.SlurmExecutor):
        return _local_throttled(executor, fn, list(items), parallelism, on_start or (lambda jobs: None))
    jobs: list[submitit.Job] = []
    previous = None
    for start in range(0, len(items), max_array_size):
        params: dict[str, Any] = {"array_parallelism": parallelism}
        if previous:
            params["dependency"] = f"afterany:{previous}"
        executor.update_parameters(**params)
        chunk = executor.map_array(fn, list(items[start : start + max_array_size]))
        previous = chunk[0].job_id.split("_")[0]
        jobs.extend(chunk)
    executor.parameters.pop("dependency", None)
    return jobs


def _local_throttled(
    executor: submitit.Executor,
    fn: Callable[..., Any],
    items: list,
    parallelism: int,
    on_start: Callable[[list[submitit.Job]], None],
    poll_s: float = 0.2,
) -> list[submitit.Job]:
    jobs: list[submitit.Job] = []
    running: list[submitit.Job] = []
    for item in items:
        while len(running) >= parallelism:
            time.sleep(poll_s)
            running = [job for job in running if not job.done()]
        job = executor.submit(fn, item)
        jobs.append(job)
        running.append(job)
        on_start(running)
    while any(not job.done() for job in running):
        time.sleep(poll_s)
    return jobs


class JobFailure(RuntimeError):
    """A job ended without a result; the message names its log file."""


def wait_all(jobs: Sequence[submitit.Job], poll_s: float = 2.0) -> list[Any]:
    """Wait for every job; return results, raising JobFailure (with log paths) if any failed."""
    results, failures = [], []
    for job in jobs:
        try:
            results.append(job.result())
        except Exception as err:  # submitit re-raises the job's own error or a FailedJobError
            failures.append(f"job {job.job_id} failed ({type(err).__name__}): see {job.paths.stderr}")
            results.append(None)
    if failures:
        raise JobFailure("; ".join(failures))
    return results
