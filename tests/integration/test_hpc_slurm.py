"""hpc.submit on the live cluster: arrays larger than MaxArraySize are split and chained."""

import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import cloudpickle
import pytest
from slurm_helpers import sbatch, scancel, wait_for_job_end, wait_until

from dcssl.runlock import chain_holders
from hpc.checkpoint import CheckpointManager
from hpc.preemption import Preempted, RequeueableJob
from hpc.queue import job_states, live_jobs
from hpc.submit import ExecutorConfig, make_executor, submit_array, wait_all

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _square(x):
    return x * x


@pytest.mark.slurm
def test_array_split_into_chained_chunks(slurm_cluster, submitit_folder):
    executor = make_executor(
        ExecutorConfig(kind="slurm", partition=slurm_cluster.partition, timeout_min=5), submitit_folder / "%j"
    )
    jobs = submit_array(executor, _square, list(range(7)), parallelism=2, max_array_size=3)
    array_ids = sorted({job.job_id.split("_")[0] for job in jobs}, key=int)
    assert len(array_ids) == 3
    assert wait_all(jobs) == [x * x for x in range(7)]
    assert "dependency" not in executor.parameters
    spans = [wait_until(lambda a=a: _spans(a), 60, 1.0, f"sacct of {a}") for a in array_ids]
    for before, after in zip(spans, spans[1:]):  # chunk i+1 starts after chunk i ended
        assert min(start for start, _ in after) >= max(end for _, end in before)


def _spans(array_id: str) -> list[tuple[datetime, datetime]] | None:
    out = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-j", array_id, "--format=Start,End"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    if not rows or any("Unknown" in r or "None" in r for row in rows for r in row):
        return None
    return [(datetime.fromisoformat(a), datetime.fromisoformat(b)) for a, b in rows]


class _CountTo(RequeueableJob):
    """Adds 1..n, one number per 0.2 s, saving its progress whenever it is preempted."""

    def __init__(self, folder, n):
        self.folder, self.n = folder, n

    def run(self, flag, *, progress_file):
        manager = CheckpointManager(self.folder, save_fn=_save_json, load_fn=_load_json)
        latest = manager.load_latest()
        i, total = latest[1] if latest else (0, 0)
        while i < self.n:
            if flag.is_set():
                manager.save([i, total], i)
                raise Preempted
            i, total = i + 1, total + i + 1
            Path(progress_file).write_text(str(i))
            time.sleep(0.2)
        return total, int(os.environ.get("SLURM_RESTART_COUNT", 0))


def _save_json(obj, path):
    Path(path).write_text(json.dumps(obj))


def _load_json(path):
    return json.loads(Path(path).read_text())


@pytest.mark.slurm
def test_requeueable_job_checkpoints_on_usr2_and_resumes(slurm_cluster, submitit_folder, tmp_path):
    executor = make_executor(
        ExecutorConfig(kind="slurm", partition=slurm_cluster.partition, timeout_min=10),
        submitit_folder / "%j",
    )
    progress = tmp_path / "progress"
    job = executor.submit(_CountTo(tmp_path / "ckpt", 60), progress_file=str(progress))
    wait_until(
        lambda: progress.is_file() and int(progress.read_text() or 0) >= 10, 120, 0.2, "the job's progress"
    )
    scancel(job.job_id, signal="USR2")
    total, restarts = job.result()
    assert total == sum(range(61)) and restarts == 1
    assert CheckpointManager(tmp_path / "ckpt", load_fn=_load_json).steps()  # it did checkpoint


@pytest.mark.slurm
def test_afterok_chain_holds_the_run_until_its_last_job_ends(slurm_cluster, tmp_path):
    """Polled as fast as squeue answers, an afterok chain of two short jobs holds the run at every
    look until its second job has ended — including the seconds between the first job's end and
    the second one's start, when the second still shows PENDING (Dependency)."""
    first, _, _ = sbatch("sleep 2\n", tmp_path / "a")
    second, _, _ = sbatch("sleep 1\n", tmp_path / "b", [f"--dependency=afterok:{first}"])
    chain, seen = [first, second], set()
    while True:
        states = job_states(chain)
        if states.get(second, ("",))[0] == "COMPLETED":
            break
        seen.add(tuple(states.get(j, ("?", ""))[0] for j in chain))
        assert chain_holders(chain, states), f"chain {chain} held nothing at {states}"
    assert wait_for_job_end(second) == "COMPLETED"
    assert chain_holders(chain, job_states(chain)) == {} and live_jobs(chain) == {}
    assert ("RUNNING", "PENDING") in seen or ("PENDING", "PENDING") in seen, seen
