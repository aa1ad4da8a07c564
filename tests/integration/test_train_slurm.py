"""Training segments on the live SLURM cluster: 2 gloo DDP ranks on a tiny ResNet and a small store.

Every run of epoch 1 starts from the same bootstrapped run directory with the same seed, so every
one of them — srun on one node, submitit tasks, two nodes preempted by USR2 and requeued, killed
with SIGKILL and resubmitted — must end with bit-identical weights. Real sbatch/srun/scancel,
real submitit, real gloo DDP, real MPI readers; slurm/train.sbatch is the script under test.

Functions a job runs are defined here at module level (the `slurm_cluster` fixture puts this
folder on the jobs' PYTHONPATH).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from slurm_helpers import scancel, wait_for_job_end, wait_for_state, wait_until

from dcssl.config import load_run_config
from dcssl.epochs.features import open_bank, read_meta
from dcssl.jsonl import read_jsonl
from dcssl.store import Store
from dcssl.train.segment import checkpoint_manager, done_path, run_segment
from dcssl.train.synthetic import make_store, write_pseudo_labels
from hpc.checkpoint import atomic_write_text
from hpc.preemption import PreemptionFlag
from hpc.submit import ExecutorConfig, make_executor

pytestmark = pytest.mark.slurm

PY = sys.executable
REPO = Path(__file__).resolve().parents[2]
TRAIN_SBATCH = REPO / "slurm" / "train.sbatch"
THIS_MODULE = __name__
JOB_TIMEOUT_S = 240  # two cores shared by two ranks, their loader workers and other engineers
N_TILES, STEPS = 192, 60  # 60 steps of 2 × 16 tiles: time to signal a job mid-epoch
CONFIG = {
    "train": {
        "model": {"arch": "resnet18", "width": 8, "proj_dim": 32, "temperature": 0.5},
        "data": {"batch_size": 16, "workers": 1, "prefetch_factor": 2, "samples_per_epoch": STEPS * 32},
        "augment": {"size": 32, "color": "none"},
        "log_every": 5,
        "checkpoint_every": 4,
    }
}


# --------------------------------------------------------------------------- helpers


def _submit(folder: Path, run_dir: Path, epoch: int, *options: str) -> tuple[str, Path]:
    """sbatch slurm/train.sbatch RUN_DIR EPOCH on the CPU partition; returns (job id, log)."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "train.log"
    proc = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--chdir={folder}",
            f"--output={log}",
            "--gpus-per-node=0",
            "--cpus-per-task=1",
            "--time=10",
            f"--export=ALL,PYTHON={PY}",
            *options,
            str(TRAIN_SBATCH),
            str(run_dir),
            str(epoch),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0], log


def _finish(job_id: str, log: Path) -> tuple[str, str]:
    state = wait_for_job_end(job_id, timeout=JOB_TIMEOUT_S)
    text = log.read_text(errors="replace") if log.exists() else ""
    return state, text


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = checkpoint_manager(run_dir).load_latest()[1]
    assert state["epoch"] == 1 and state["phase"] == "done", (state["epoch"], state["phase"])
    return state["model"]


def _assert_same_weights(run_dir: Path, reference: Path) -> None:
    a, b = _weights(run_dir), _weights(reference)
    assert list(a) == list(b)
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert not differing, f"weights differ from the uninterrupted run: {differing[:5]}"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _windows(run_dir: Path) -> list[dict]:
    return [
        r for r in read_jsonl(run_dir / "metrics.jsonl") if r["kind"] == "train_window" and r["epoch"] == 1
    ]


@pytest.fixture(scope="module")
def booted(slurm_cluster, tmp_path_factory) -> Path:
    """A run directory after the bootstrap (epoch 0), with the stored classes as epoch-0 labels."""
    root = tmp_path_factory.mktemp("train-slurm") / "booted"
    store = make_store(root / "store", n_shards=3, tiles_per_shard=N_TILES // 3, size=32)
    (root / "config.yaml").write_text(json.dumps(CONFIG))
    torch.set_num_threads(1)
    run_segment(root, 0, load_run_config(root).train, flag=PreemptionFlag(), requeue=False)
    write_pseudo_labels(root, 0, store.labels(), 4)
    return root


@pytest.fixture(scope="module")
def reference(booted, tmp_path_factory) -> tuple[Path, str]:
    """Epoch 1, uninterrupted: `srun` with 2 tasks on one node."""
    base = tmp_path_factory.mktemp("reference")
    run_dir = _copy(booted, base / "run")
    job_id, log = _submit(base / "job", run_dir, 1, "--nodes=1", "--ntasks-per-node=2")
    state, text = _finish(job_id, log)
    assert state == "COMPLETED", text
    return run_dir, text


# --------------------------------------------------------------------------- srun, 2 ranks

READERS_SNIPPET = """
import json, sys
import numpy as np
from dcssl.epochs.features import open_bank
from hpc.mpi import allreduce, shard_range, world

comm = world()
bank = open_bank(sys.argv[1], 1)
start, stop = shard_range(bank.shape[0], comm.Get_rank(), comm.Get_size())
part = np.array([stop - start, bank[start:stop].astype(np.float64).sum()])
total = allreduce(part, comm)
print(json.dumps({"rank": comm.Get_rank(), "size": comm.Get_size(), "rows": int(total[0]),
                  "sum": float(total[1])}), flush=True)
"""


def test_srun_two_ranks_loss_falls_and_bank_is_complete_disjoint_and_readable(
    slurm_cluster, booted, reference, tmp_path
):
    run_dir, text = reference
    summary = json.loads([ln for ln in text.splitlines() if ln.startswith("{")][-1])
    assert summary["complete"] and summary["world_size"] == 2 and summary["steps"] == STEPS
    assert "via slurm" in text and "rank 1 of 2" in text

    losses = [w["loss"] for w in _windows(run_dir)]
    assert len(losses) == STEPS // 5
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:2]), losses  # it learns the labelling

    meta = read_meta(run_dir, 1)
    assert meta["n"] == N_TILES and meta["dim"] == 32 and meta["source"] == "train"
    visited = round(N_TILES * (1 - meta["stale_fraction"]))
    # the two ranks' row counts add up to the distinct rows: no row was written twice
    assert summary["bank_rows_written_this_job"] == visited > 0
    bank, before = open_bank(run_dir, 1), open_bank(booted, 0)
    changed = ~(bank == before).all(axis=1)
    assert int(changed.sum()) == visited
    norms = np.linalg.norm(bank[changed].astype(np.float32), axis=1)
    assert np.allclose(norms, 1.0, atol=2e-3)

    snippet = tmp_path / "readers.py"
    snippet.write_text(READERS_SNIPPET)
    readers = subprocess.run(
        ["srun", "--mpi=pmi2", "-n", "3", "--time=5", PY, str(snippet), str(run_dir)],
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S,
    )
    assert readers.returncode == 0, readers.stderr
    rows = [json.loads(ln) for ln in readers.stdout.splitlines() if ln.startswith("{")]
    assert [r["size"] for r in rows] == [3, 3, 3]  # three readers of what two ranks wrote
    assert all(r["rows"] == N_TILES for r in rows)
    full = float(np.asarray(bank, dtype=np.float64).sum())
    assert all(r["sum"] == pytest.approx(full, rel=1e-12) for r in rows)


# --------------------------------------------------------------------------- submitit


def segment_job(run_dir: str, epoch: int) -> dict:
    """A submitit task: one rank of the segment, configured from the run directory."""
    torch.set_num_threads(1)
    return run_segment(run_dir, epoch, load_run_config(run_dir).train)


def test_submitit_tasks_end_with_the_same_weights_as_srun(
    slurm_cluster, booted, reference, submitit_folder, tmp_path
):
    run_dir = _copy(booted, tmp_path / "run")
    cfg = ExecutorConfig(
        kind="slurm",
        partition=slurm_cluster.partition,
        tasks_per_node=2,
        cpus_per_task=1,
        timeout_min=10,
        setup=["export OMP_NUM_THREADS=1"],
    )
    job = make_executor(cfg, submitit_folder, job_name="dcssl-train-submitit").submit(
        segment_job, str(run_dir), 1
    )
    wait_until(job.done, JOB_TIMEOUT_S, poll_s=1, what=f"submitit job {job.job_id}")
    summaries = job.results()
    assert [s["world_size"] for s in summaries] == [2, 2] and all(s["complete"] for s in summaries)
    _assert_same_weights(run_dir, reference[0])
    assert np.array_equal(open_bank(run_dir, 1), open_bank(reference[0], 1))


# --------------------------------------------------------------------------- preemption


def test_two_nodes_usr2_mid_epoch_requeue_ends_with_the_same_weights(
    slurm_cluster, booted, reference, tmp_path
):
    assert len(slurm_cluster.nodes) >= 2, slurm_cluster
    run_dir = _copy(booted, tmp_path / "run")
    job_id, log = _submit(tmp_path / "job", run_dir, 1, "--nodes=2", "--ntasks-per-node=1")
    wait_for_state(job_id, {"RUNNING"}, timeout=JOB_TIMEOUT_S)
    wait_until(
        lambda: any(w["step"] >= 5 for w in _windows(run_dir)),
        JOB_TIMEOUT_S,
        poll_s=0.1,
        what="the segment to train a few steps",
    )
    scancel(job_id, signal="USR2")  # what preemption or the time limit sends
    state, text = _finish(job_id, log)
    assert state == "COMPLETED", text

    preempted = re.search(r"preempted at epoch 1 step (\d+)", text)
    assert preempted, text
    step = int(preempted[1])
    assert 5 <= step < STEPS, text  # mid-epoch
    assert f"resuming epoch 1 in phase train at step {step}" in text, text
    assert "restart 1" in text  # the same job, requeued by rank 0
    nodes = set(re.findall(r"node \d of 2: (\S+)\)", text))
    assert len(nodes) == 2 and nodes <= set(slurm_cluster.nodes), nodes
    _assert_same_weights(run_dir, reference[0])
    assert np.array_equal(open_bank(run_dir, 1), open_bank(reference[0], 1))


def test_kill_9_mid_step_resumes_from_the_last_checkpoint(slurm_cluster, booted, reference, tmp_path):
    run_dir = _copy(booted, tmp_path / "run")
    ckpt = checkpoint_manager(run_dir)
    job_id, log = _submit(tmp_path / "first", run_dir, 1, "--ntasks-per-node=2", "--no-requeue")
    wait_until(
        lambda: ckpt.steps() and ckpt.steps()[-1] >= 8,
        JOB_TIMEOUT_S,
        poll_s=0.1,
        what="a checkpoint a few steps in",
    )
    scancel(job_id, signal="KILL")  # SIGKILL to every rank, wherever it is in its step
    state, text = _finish(job_id, log)
    assert state != "COMPLETED" and not done_path(run_dir, 1).exists(), text
    last = ckpt.steps()[-1]
    assert last < STEPS

    job_id, log = _submit(tmp_path / "second", run_dir, 1, "--ntasks-per-node=2")
    state, text = _finish(job_id, log)
    assert state == "COMPLETED", text
    assert f"resuming epoch 1 in phase train at step {last}" in text, text
    _assert_same_weights(run_dir, reference[0])


# --------------------------------------------------------------------------- labels and head


def swap_worker(run_dir: str, out_dir: str) -> None:
    """One rank: train on labels A, swap to labels B (k smaller), then C (k larger), checking
    that nothing is rebuilt except the DDP wrapper when the head grows."""
    from dcssl.train.trainer import Trainer
    from hpc.distributed import init_distributed

    torch.set_num_threads(1)
    env, device = init_distributed(timeout_s=120)
    cfg = load_run_config(run_dir).train
    cfg.data.samples_per_epoch = 0  # DeepCluster's N: every labelled tile once, no repeats
    n = Store(Path(run_dir) / "store").n_tiles
    a = Store(Path(run_dir) / "store").labels().astype(np.int32)
    b = np.full(n, -1, dtype=np.int32)
    b[::2] = np.arange(0, n, 2) % 3  # half the tiles unassigned, 3 clusters
    c = (np.arange(n) % 6).astype(np.int32)

    trainer = Trainer(run_dir, cfg, env, device, k=4)
    trainer.start_epoch(1, a, 4)
    for batch in trainer.batches(3):
        trainer.train_step(batch)
    kept = {
        name: id(getattr(trainer, name))
        for name in ("dataset", "sampler", "loader", "model", "optimizer", "ddp")
    }
    head = trainer.model.head.weight
    trunk = {
        k: v.clone() for k, v in trainer.model.state_dict().items() if k.startswith(("trunk.", "projection."))
    }

    trainer.start_epoch(2, b, 3)
    record = {
        "rank": env.rank,
        "world": env.world_size,
        "same_objects_after_swap": {k: id(getattr(trainer, k)) == v for k, v in kept.items()},
        "head_same_parameter": trainer.model.head.weight is head,
        "head_std": float(trainer.model.head.weight.std()),
        "head_momentum_cleared": head not in trainer.optimizer.state,
        "trunk_untouched": all(torch.equal(trainer.model.state_dict()[k], v) for k, v in trunk.items()),
    }
    drawn, targets_ok = [], True
    for batch in trainer.batches(3):
        drawn += batch["index"].tolist()
        targets_ok &= (
            trainer.dataset.labels_for(batch["index"]).tolist() == b[batch["index"].numpy()].tolist()
        )
        trainer.train_step(batch)
    record["drawn_b"] = drawn
    record["targets_follow_b"] = bool(targets_ok)

    trainer.start_epoch(3, c, 6)  # k grows: only the DDP wrapper is rebuilt
    record["same_objects_after_growth"] = {k: id(getattr(trainer, k)) == v for k, v in kept.items()}
    for batch in trainer.batches(2):
        trainer.train_step(batch)
    record["head_shape"] = list(trainer.model.head.weight.shape)
    record["params_sum"] = float(sum(p.double().sum() for p in trainer.model.parameters()))
    atomic_write_text(Path(out_dir) / f"rank-{env.rank}.json", json.dumps(record))


def test_label_swap_and_head_reset_across_two_ranks_without_a_rebuild(slurm_cluster, booted, tmp_path):
    out = tmp_path / "ranks"
    out.mkdir()
    proc = subprocess.run(
        [
            "srun",
            "-n",
            "2",
            "--time=5",
            "--cpus-per-task=1",
            PY,
            "-c",
            f"import sys; from {THIS_MODULE} import swap_worker; swap_worker(sys.argv[1], sys.argv[2])",
            str(booted),
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in sorted(out.glob("rank-*.json"))]
    assert [r["world"] for r in records] == [2, 2]
    labels_b = np.full(N_TILES, -1)
    labels_b[::2] = 0
    for r in records:
        assert all(r["same_objects_after_swap"].values()), r["same_objects_after_swap"]
        assert r["head_same_parameter"] and r["head_momentum_cleared"] and r["trunk_untouched"]
        assert abs(r["head_std"] - 0.01) < 0.005
        assert r["targets_follow_b"] and len(r["drawn_b"]) == 48
        assert all(labels_b[i] == 0 for i in r["drawn_b"])  # only tiles labelled in B are drawn
        grown = r["same_objects_after_growth"]
        assert not grown.pop("ddp") and all(grown.values()), r["same_objects_after_growth"]
        assert r["head_shape"] == [6, 32]
    assert not set(records[0]["drawn_b"]) & set(records[1]["drawn_b"])  # disjoint ranks
    assert records[0]["params_sum"] == records[1]["params_sum"]  # DDP kept them in sync
