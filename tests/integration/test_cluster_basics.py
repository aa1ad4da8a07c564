"""The live SLURM cluster runs what the project needs: throttled arrays, MPI over srun, gloo DDP
(srun and submitit, one and two nodes), multi-node jobs, and preemption → checkpoint → requeue.

Real engines only: real sbatch/srun/scontrol, real mpi4py (MPICH wheel, PMI2), real torch DDP, real
submitit. The MPI, DDP and requeue logic runs through the project's `hpc` package.

Functions a job runs are defined here at module level: submitit pickles them by reference, and the
`slurm_cluster` fixture puts this folder on the jobs' PYTHONPATH so they import in the job.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
import submitit
from slurm_helpers import (
    run_sbatch_and_wait,
    sbatch,
    scancel,
    show_job_records,
    wait_for_job_end,
    wait_for_state,
    wait_until,
)

from hpc.checkpoint import atomic_write_text
from hpc.submit import ExecutorConfig, make_executor, submit_array

pytestmark = pytest.mark.slurm

PY = sys.executable
THIS_MODULE = __name__  # how jobs import the functions below (this folder is on their PYTHONPATH)
JOB_TIMEOUT_S = 120  # generous: 2 cores shared with other engineers' work


def _wait_submitit(jobs: list[submitit.Job], timeout: float = JOB_TIMEOUT_S) -> None:
    """Wait for submitit jobs with a deadline (job.result() alone would wait forever)."""
    try:
        wait_until(
            lambda: all(job.done() for job in jobs),
            timeout,
            poll_s=0.5,
            what=f"submitit jobs {[j.job_id for j in jobs]}",
        )
    except TimeoutError:
        for job in jobs:
            job.cancel(check=False)
        raise


# --------------------------------------------------------------------------- throttled array


def nap_and_square(x: int) -> dict:
    """Array element: record when it ran, so the test can count how many ran at once."""
    start = time.time()
    time.sleep(1.5)
    return {
        "x": x,
        "y": x * x,
        "start": start,
        "end": time.time(),
        "task": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "node": os.environ.get("SLURMD_NODENAME"),
    }


def _max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted(
        [(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda ev: (ev[0], ev[1])
    )  # an end before a start at the same instant
    running = peak = 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    return peak


def test_submitit_array_throttled_to_two(slurm_cluster, submitit_folder):
    cfg = ExecutorConfig(kind="slurm", partition=slurm_cluster.partition, timeout_min=5, array_parallelism=2)
    executor = make_executor(cfg, submitit_folder, job_name="dcssl-array")
    items = list(range(6))
    jobs = submit_array(executor, nap_and_square, items, parallelism=2)
    assert len(jobs) == 6
    array_id = jobs[0].job_id.split("_")[0]

    # slurmctld holds the throttle: every element record carries ArrayTaskThrottle=2
    records = show_job_records(array_id)
    assert records, f"scontrol does not know array job {array_id}"
    assert {r.get("ArrayTaskThrottle") for r in records} == {"2"}, records

    # ... and so does the script submitit generated
    submission = Path(jobs[0].paths.submission_file).read_text()
    assert "#SBATCH --array=0-5%2" in submission, submission

    _wait_submitit(jobs)
    results = [job.result() for job in jobs]
    assert [r["y"] for r in results] == [x * x for x in items]
    assert sorted(int(r["task"]) for r in results) == items
    # the throttle held: never more than 2 elements ran at the same time (8 CPUs × 3 nodes free)
    assert _max_overlap([(r["start"], r["end"]) for r in results]) <= 2, results


# --------------------------------------------------------------------------- MPI over srun (PMI2)

MPI_SNIPPET = """
import json, os
import numpy as np
from hpc.mpi import allreduce, gather_counts, shard_range, world

comm = world()
rank, size = comm.Get_rank(), comm.Get_size()
total = allreduce(np.arange(10, dtype=np.float64) * (rank + 1), comm)
start, stop = shard_range(1000, rank, size)
counts = gather_counts(stop - start, comm)
print(json.dumps({"rank": rank, "size": size, "procid": int(os.environ["SLURM_PROCID"]),
                  "total": total.tolist(), "counts": counts.tolist()}), flush=True)
"""


def test_mpi_allreduce_under_srun_pmi2(slurm_cluster, tmp_path):
    snippet = tmp_path / "mpi_allreduce.py"
    snippet.write_text(MPI_SNIPPET)
    result = run_sbatch_and_wait(
        f"""#!/bin/bash
#SBATCH --partition={slurm_cluster.partition} --ntasks=2 --time=5 --job-name=dcssl-mpi
export OMP_NUM_THREADS=1
srun --mpi=pmi2 -n 2 {PY} {snippet}
""",
        tmp_path,
        timeout=JOB_TIMEOUT_S,
    )
    assert result.state == "COMPLETED", result.describe()
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 2, result.describe()
    # --mpi=none would silently give two 1-rank worlds: the world size is the real check
    assert [r["size"] for r in rows] == [2, 2], rows
    assert sorted(r["rank"] for r in rows) == [0, 1]
    assert all(r["rank"] == r["procid"] for r in rows)
    expected = [float(i * (1 + 2)) for i in range(10)]
    assert all(r["total"] == expected for r in rows), rows
    assert all(r["counts"] == [500, 500] for r in rows), rows


# --------------------------------------------------------------------------- gloo DDP


def _ddp_model():
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))


def _ddp_batch(rank: int):
    import torch

    gen = torch.Generator().manual_seed(1000 + rank)  # different data on every rank
    return torch.randn(8, 4, generator=gen), torch.randn(8, 1, generator=gen)


LR = 0.5


def ddp_one_step(outdir: str) -> dict:
    """One DDP optimizer step on this rank's batch; writes and returns this rank's parameters."""
    import torch
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel

    from hpc.distributed import init_distributed, shutdown_distributed

    torch.set_num_threads(1)
    env, device = init_distributed(timeout_s=90)
    model = _ddp_model().to(device)
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=LR)
    x, y = _ddp_batch(env.rank)
    F.mse_loss(ddp(x.to(device)), y.to(device)).backward()
    optimizer.step()
    record = {
        "rank": env.rank,
        "world_size": env.world_size,
        "local_rank": env.local_rank,
        "master_addr": env.master_addr,
        "source": env.source,
        "slurm_procid": int(os.environ["SLURM_PROCID"]),
        "slurm_ntasks": int(os.environ.get("SLURM_STEP_NUM_TASKS") or os.environ["SLURM_NTASKS"]),
        "node": os.environ.get("SLURMD_NODENAME"),
        "params": [p.detach().cpu().flatten().tolist() for p in model.parameters()],
    }
    atomic_write_text(Path(outdir) / f"rank-{env.rank}.json", json.dumps(record))
    shutdown_distributed()
    return record


def _expected_params_after_step(world_size: int) -> list[list[float]]:
    """What DDP must produce: one SGD step on the gradient averaged over every rank's batch."""
    import torch
    import torch.nn.functional as F

    grads = None
    for rank in range(world_size):
        model = _ddp_model()
        x, y = _ddp_batch(rank)
        F.mse_loss(model(x), y).backward()
        g = [p.grad.clone() for p in model.parameters()]
        grads = g if grads is None else [a + b for a, b in zip(grads, g)]
    model = _ddp_model()
    with torch.no_grad():
        for p, g in zip(model.parameters(), grads):
            p -= LR * g / world_size
    return [p.flatten().tolist() for p in model.parameters()]


def _assert_ddp_records(records: list[dict], world_size: int) -> None:
    import torch

    assert sorted(r["rank"] for r in records) == list(range(world_size)), records
    for r in records:
        # the project's detect_env agrees with SLURM's raw variables
        assert r["source"] == "slurm", r
        assert r["rank"] == r["slurm_procid"] and r["world_size"] == r["slurm_ntasks"] == world_size, r
    first = records[0]["params"]
    for r in records[1:]:  # every rank holds the same parameters after the step ...
        for a, b in zip(first, r["params"]):
            assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=0, rtol=0), "ranks diverged"
    expected = _expected_params_after_step(world_size)  # ... and they are the all-reduced step
    for got, want in zip(first, expected):
        assert torch.allclose(torch.tensor(got), torch.tensor(want), atol=1e-6), (got, want)
    before = [p.flatten().tolist() for p in _ddp_model().parameters()]
    assert any(b != a for b, a in zip(before, first)), "the optimizer step changed nothing"


@pytest.mark.parametrize(
    "layout", ["-N 1 -n 2", "-N 2 --ntasks-per-node=1"], ids=["1node-2tasks", "2nodes-1task"]
)
def test_ddp_gloo_from_srun(slurm_cluster, tmp_path, layout):
    outdir = tmp_path / "ranks"
    outdir.mkdir()
    result = run_sbatch_and_wait(
        f"""#!/bin/bash
#SBATCH --partition={slurm_cluster.partition} {layout} --time=5 --job-name=dcssl-ddp
export OMP_NUM_THREADS=1
export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
echo "MASTER_ADDR=$MASTER_ADDR"
srun {PY} -c "import sys; from {THIS_MODULE} import ddp_one_step; ddp_one_step(sys.argv[1])" {outdir}
""",
        tmp_path,
        timeout=JOB_TIMEOUT_S,
    )
    assert result.state == "COMPLETED", result.describe()
    records = [json.loads(p.read_text()) for p in sorted(outdir.glob("rank-*.json"))]
    assert len(records) == 2, result.describe()
    _assert_ddp_records(records, world_size=2)
    master = result.stdout.split("MASTER_ADDR=")[1].split()[0]
    assert all(r["master_addr"] == master for r in records)
    if layout.startswith("-N 2"):
        assert len({r["node"] for r in records}) == 2, records


def test_ddp_gloo_from_submitit_tasks_per_node(slurm_cluster, submitit_folder, tmp_path):
    outdir = tmp_path / "ranks"
    outdir.mkdir()
    cfg = ExecutorConfig(kind="slurm", partition=slurm_cluster.partition, tasks_per_node=2, timeout_min=5)
    executor = make_executor(cfg, submitit_folder, job_name="dcssl-ddp-submitit")
    job = executor.submit(ddp_one_step, str(outdir))
    _wait_submitit([job])
    records = job.results()
    assert len(records) == 2
    _assert_ddp_records(records, world_size=2)
    on_disk = [json.loads(p.read_text()) for p in sorted(outdir.glob("rank-*.json"))]
    assert sorted(r["rank"] for r in on_disk) == [0, 1]


# --------------------------------------------------------------------------- two nodes


def test_two_node_job(slurm_cluster, tmp_path):
    assert len(slurm_cluster.nodes) >= 2, slurm_cluster
    result = run_sbatch_and_wait(
        f"""#!/bin/bash
#SBATCH --partition={slurm_cluster.partition} --nodes=2 --ntasks-per-node=1 --time=5
#SBATCH --job-name=dcssl-2nodes
srun bash -c 'echo "task $SLURM_PROCID $SLURM_JOB_NUM_NODES $SLURMD_NODENAME"'
""",
        tmp_path,
        timeout=JOB_TIMEOUT_S,
    )
    assert result.state == "COMPLETED", result.describe()
    rows = [line.split()[1:] for line in result.stdout.splitlines() if line.startswith("task ")]
    assert len(rows) == 2, result.describe()
    assert {num_nodes for _, num_nodes, _ in rows} == {"2"}
    names = {name for _, _, name in rows}
    assert len(names) == 2 and names <= set(slurm_cluster.nodes), rows


# --------------------------------------------------------------------------- preemption → requeue


def _read_json(path: Path, default):
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


class CountToN(submitit.helpers.Checkpointable):
    """Sums 0..n-1, one number per step, its progress saved to a file after every step.

    submitit calls `checkpoint` from its USR2 handler; it notes the step it was preempted at and
    lets submitit requeue the same call, which resumes from the progress file.
    """

    def __call__(self, n: int, progress_file: str, step_s: float) -> dict:
        path = Path(progress_file)
        state = _read_json(path, {"step": 0, "total": 0, "starts": [], "checkpointed_at": None})
        restart_count = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        state["starts"].append({"step": state["step"], "restart_count": restart_count})
        atomic_write_text(path, json.dumps(state))
        for i in range(state["step"], n):
            time.sleep(step_s)
            state["total"] += i
            state["step"] = i + 1
            atomic_write_text(path, json.dumps(state))
        return {"total": state["total"], "restart_count": restart_count, "state": state}

    def checkpoint(self, n: int, progress_file: str, step_s: float) -> submitit.helpers.DelayedSubmission:
        path = Path(progress_file)
        state = _read_json(path, {})
        state["checkpointed_at"] = state.get("step")
        atomic_write_text(path, json.dumps(state))
        return super().checkpoint(n, progress_file, step_s)


def test_checkpointable_job_requeued_on_usr2(slurm_cluster, submitit_folder, tmp_path):
    n, progress = 12, tmp_path / "progress.json"
    cfg = ExecutorConfig(kind="slurm", partition=slurm_cluster.partition, timeout_min=10)
    executor = make_executor(cfg, submitit_folder, job_name="dcssl-requeue")
    job = executor.submit(CountToN(), n, str(progress), 0.5)

    wait_for_state(job.job_id, {"RUNNING"}, timeout=JOB_TIMEOUT_S)
    wait_until(
        lambda: _read_json(progress, {}).get("step", 0) >= 2, JOB_TIMEOUT_S, what="the job to make progress"
    )
    scancel(job.job_id, signal="USR2")  # what preemption / the time limit sends (submitit's signal)

    _wait_submitit([job])
    result = job.result()
    assert result["total"] == sum(range(n))
    assert result["restart_count"] == 1, result
    state = result["state"]
    assert state["checkpointed_at"] is not None and 2 <= state["checkpointed_at"] < n, state
    # two runs: the first from step 0, the requeued one resumed where the first was preempted
    assert [s["restart_count"] for s in state["starts"]] == [0, 1], state
    assert state["starts"][1]["step"] >= state["checkpointed_at"], state


PREEMPTIBLE_SNIPPET = """
import json, os, sys, time
from pathlib import Path
from hpc.checkpoint import CheckpointManager
from hpc.preemption import PreemptionFlag, requeue_and_exit

n, folder = int(sys.argv[1]), Path(sys.argv[2])
ckpts = CheckpointManager(folder, prefix="count", keep=2,
                          save_fn=lambda obj, p: p.write_text(json.dumps(obj)),
                          load_fn=lambda p: json.loads(p.read_text()))
flag = PreemptionFlag().install()
latest = ckpts.load_latest()
step, total = (latest[1]["step"], latest[1]["total"]) if latest else (0, 0)
restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
print(f"start step={step} restart_count={restarts}", flush=True)
while step < n:
    time.sleep(0.5)
    total += step
    step += 1
    (folder / "progress").write_text(str(step))
    if flag.is_set():  # a safe point: save a consistent checkpoint, then requeue
        ckpts.save({"step": step, "total": total}, step)
        print(f"preempted at step={step}", flush=True)
        requeue_and_exit()
print(f"done total={total} restart_count={restarts}", flush=True)
"""


def test_preemption_flag_checkpoint_and_requeue(slurm_cluster, tmp_path):
    """The project's own path (hpc.preemption + hpc.checkpoint) under a plain requeueable sbatch."""
    n, folder = 12, tmp_path / "ckpt"
    folder.mkdir()
    snippet = tmp_path / "preemptible.py"
    snippet.write_text(PREEMPTIBLE_SNIPPET)
    job_id, out, err = sbatch(
        f"""#!/bin/bash
#SBATCH --partition={slurm_cluster.partition} --ntasks=1 --time=5 --requeue --open-mode=append
#SBATCH --job-name=dcssl-preempt
srun {PY} {snippet} {n} {folder}
""",
        tmp_path,
    )
    progress = folder / "progress"
    wait_for_state(job_id, {"RUNNING"}, timeout=JOB_TIMEOUT_S)
    wait_until(
        lambda: progress.exists() and int(progress.read_text() or 0) >= 2,
        JOB_TIMEOUT_S,
        what="the job to make progress",
    )
    scancel(job_id, signal="USR2")
    state = wait_for_job_end(job_id, timeout=JOB_TIMEOUT_S)
    text = out.read_text() if out.exists() else ""
    errors = err.read_text() if err.exists() else ""
    assert state == "COMPLETED", f"{state}\n{text}\n{errors}"
    assert f"done total={sum(range(n))} restart_count=1" in text, f"{text}\n{errors}"
    assert "preempted at step=" in text and "restart_count=0" in text, text
    preempted_at = int(text.split("preempted at step=")[1].split()[0])
    assert f"start step={preempted_at} restart_count=1" in text, text  # resumed, not restarted
    assert 1 <= len(list(folder.glob("count-*.pt"))) <= 2
