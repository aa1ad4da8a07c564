"""The cluster job with real MPI ranks: rank-count invariance, kill -9 and preemption resume, SLURM.

Runs ``python -m dcssl.cluster`` alone, under ``mpiexec -n R`` (the PyPI mpich wheel) and under
``srun --mpi=pmi2 -n 2`` on the live cluster; compares labels byte for byte.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score

from dcssl.cluster.store import checkpoints
from dcssl.epochs.features import write_bank
from hpc.mpi import mpiexec

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _cmd(run: Path, epoch: int, ranks: int, overrides: list[str]) -> list[str]:
    base = [sys.executable, "-m", "dcssl.cluster", str(run), "--epoch", str(epoch), *overrides]
    return base if ranks == 0 else [mpiexec(), "-n", str(ranks), *base]


def _run(run: Path, epoch: int, ranks: int, overrides: list[str]) -> dict:
    proc = subprocess.run(
        _cmd(run, epoch, ranks, overrides), env=ENV, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((run / "labels" / f"epoch-{epoch:04d}" / "stats.json").read_text())


def _labels(run: Path, epoch: int = 0) -> np.ndarray:
    return np.fromfile(run / "labels" / f"epoch-{epoch:04d}" / "labels.i32", dtype="<i4")


def _centroids(run: Path, epoch: int = 0) -> np.ndarray:
    return np.load(run / "labels" / f"epoch-{epoch:04d}" / "centroids.npy")


SMALL = ["k=16", "pca_dim=12", "block_rows=1000", "iterations=8", "init_trials=2"]


def test_1_2_4_ranks_give_identical_labels_and_nmi(tmp_path):
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((16, 24)) * 3
    x = centers[rng.integers(0, 16, 20_000)] + rng.standard_normal((20_000, 24))
    x_next = x + 0.5 * rng.standard_normal(x.shape)
    runs = {r: tmp_path / f"r{r}" for r in (0, 2, 4)}  # 0: plain python, no mpiexec
    for ranks, run in runs.items():
        write_bank(run, 0, x)
        write_bank(run, 1, x_next)
        stats = _run(run, 0, ranks, SMALL)
        assert stats["ranks"] == max(ranks, 1)
        _run(run, 1, ranks, SMALL)
    ref = runs[0]
    for run in (runs[2], runs[4]):
        assert np.array_equal(_labels(ref), _labels(run))
        assert np.array_equal(_labels(ref, 1), _labels(run, 1))
        assert np.array_equal(_centroids(ref), _centroids(run))
    stats = [json.loads((run / "labels/epoch-0001/stats.json").read_text()) for run in runs.values()]
    assert len({s["inertia"] for s in stats}) == 1 and len({s["iterations"] for s in stats}) == 1
    dense = normalized_mutual_info_score(_labels(ref, 0), _labels(ref, 1))
    for s in stats:
        assert s["nmi_prev"] == pytest.approx(dense, abs=1e-12)


def test_rcc_one_and_two_ranks_give_identical_labels(tmp_path):
    """RCC runs on a gathered sample on rank 0; every row is then assigned by the sharded step."""
    rng = np.random.default_rng(2)
    centers = rng.standard_normal((6, 16)) * 4
    y = rng.integers(0, 6, 6000)
    x = centers[y] + rng.standard_normal((6000, 16))
    overrides = ["method=rcc", "pca_dim=8", "block_rows=1000", "rcc.sample=2500", "rcc.min_size=5"]
    runs = {r: tmp_path / f"r{r}" for r in (0, 2)}
    for ranks, run in runs.items():
        write_bank(run, 0, x)
        stats = _run(run, 0, ranks, overrides)
        assert stats["ranks"] == max(ranks, 1) and stats["warnings"] == []
    assert np.array_equal(_labels(runs[0]), _labels(runs[2]))
    assert np.array_equal(_centroids(runs[0]), _centroids(runs[2]))
    assert normalized_mutual_info_score(y, _labels(runs[0])) > 0.99


SLOW = [
    "k=200",
    "pca_dim=0",
    "block_rows=4096",
    "iterations=60",
    "tol=0",
    "init=random",
    "keep_checkpoints_after=true",
]


@pytest.fixture(scope="module")
def slow_reference(tmp_path_factory):
    """Features that take ~60 iterations, and the labels of an uninterrupted 1-rank run."""
    x = np.random.default_rng(1).standard_normal((60_000, 32))
    run = tmp_path_factory.mktemp("reference")
    write_bank(run, 0, x)
    stats = _run(run, 0, 0, SLOW)
    assert stats["iterations"] > 10
    return x, _labels(run), _centroids(run)


def _start_and_kill(run: Path, ranks: int, at_least: int, sig: int = signal.SIGKILL) -> subprocess.Popen:
    proc = subprocess.Popen(
        _cmd(run, 0, ranks, SLOW),
        env=ENV,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    ckpt = checkpoints(run, 0, 2)
    deadline = time.monotonic() + 120
    while not any(s >= at_least for s in ckpt.steps()):
        assert proc.poll() is None, f"job ended before iteration {at_least}: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    if sig == signal.SIGKILL:
        os.killpg(proc.pid, signal.SIGKILL)  # mpiexec and every rank, mid-iteration
    else:
        os.kill(proc.pid, sig)
    proc.wait(timeout=120)
    return proc


@pytest.mark.parametrize("first,second", [(2, 2), (0, 4), (4, 1)])
def test_kill9_mid_run_resumes_with_same_or_other_rank_count(tmp_path, slow_reference, first, second):
    x, ref_labels, ref_centroids = slow_reference
    write_bank(tmp_path, 0, x)
    _start_and_kill(tmp_path, first, at_least=3)
    assert not (tmp_path / "labels/epoch-0000/COMPLETE").exists()
    resume_at = checkpoints(tmp_path, 0, 2).steps()[-1]
    stats = _run(tmp_path, 0, second, SLOW)
    assert stats["resumed_from"] == resume_at >= 3
    assert np.array_equal(_labels(tmp_path), ref_labels)
    assert np.array_equal(_centroids(tmp_path), ref_centroids)


def test_preemption_signal_checkpoints_exits_and_resumes(tmp_path, slow_reference):
    x, ref_labels, _ = slow_reference
    write_bank(tmp_path, 0, x)
    proc = _start_and_kill(tmp_path, 0, at_least=2, sig=signal.SIGUSR2)
    assert proc.returncode == 75, proc.stderr.read()  # outside SLURM: "try again" exit
    saved = checkpoints(tmp_path, 0, 2).steps()[-1]
    stats = _run(tmp_path, 0, 2, SLOW)
    assert stats["resumed_from"] == saved
    assert np.array_equal(_labels(tmp_path), ref_labels)


def test_finished_epoch_rerun_is_a_no_op(tmp_path):
    write_bank(tmp_path, 0, np.random.default_rng(2).standard_normal((3000, 8)))
    _run(tmp_path, 0, 2, SMALL)
    before = (tmp_path / "labels/epoch-0000/labels.i32").stat().st_mtime_ns
    proc = subprocess.run(_cmd(tmp_path, 0, 2, SMALL), env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "nothing to do" in proc.stderr
    assert (tmp_path / "labels/epoch-0000/labels.i32").stat().st_mtime_ns == before
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["kind"] for m in metrics] == ["cluster", "epoch"]  # the stage publishes its epoch once


@pytest.mark.slurm
def test_srun_pmi2_two_ranks_match_one_rank(slurm_cluster, tmp_path):
    from slurm_helpers import wait_for_job_end

    rng = np.random.default_rng(3)
    x = rng.standard_normal((12_000, 16)) + 4 * rng.standard_normal((12, 16))[rng.integers(0, 12, 12_000)]
    one, two = tmp_path / "one", tmp_path / "two"
    for run in (one, two):
        write_bank(run, 0, x)
    _run(one, 0, 0, SMALL)
    log = tmp_path / "job.log"
    submit = subprocess.run(
        [
            "sbatch",
            "--parsable",
            "--ntasks=2",
            f"--partition={slurm_cluster.partition}",
            f"--output={log}",
            f"--export=ALL,PYTHONPATH={REPO},PYTHON={sys.executable}",
            str(REPO / "slurm" / "cluster.sbatch"),
            str(two),
            "0",
            *SMALL,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert submit.returncode == 0, submit.stderr
    state = wait_for_job_end(submit.stdout.strip().split(";")[0], timeout=240)
    assert state == "COMPLETED", log.read_text()[-3000:] if log.exists() else state
    stats = json.loads((two / "labels/epoch-0000/stats.json").read_text())
    assert stats["ranks"] == 2  # a real 2-rank world, not two 1-rank worlds
    assert np.array_equal(_labels(one), _labels(two))


LARGE_K = ["k=64", "pca_dim=12", "block_rows=1000", "iterations=8", "init=kmeans||", "groups=8"]


def test_kmeans_parallel_init_and_group_bounds_give_identical_labels_for_1_2_4_ranks(tmp_path):
    # k-means|| draws from a sample spread over the ranks, the group bounds prune each shard:
    # neither may depend on how the rows are split.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 24))[rng.integers(0, 16, 20_000)] * 3 + rng.standard_normal((20_000, 24))
    runs = {r: tmp_path / f"r{r}" for r in (0, 2, 4)}
    for ranks, run in runs.items():
        write_bank(run, 0, x)
        _run(run, 0, ranks, LARGE_K)
    for run in (runs[2], runs[4]):
        assert np.array_equal(_labels(runs[0]), _labels(run))
        assert np.array_equal(_centroids(runs[0]), _centroids(run))


SLOW_INIT = ["k=4000", "pca_dim=0", "block_rows=4096", "iterations=3", "init=kmeans||", "init_refine=0"]


def test_kill9_during_the_init_resumes_after_its_last_round(tmp_path):
    # d = 128: at 64 the reduction affords all 80 k sample rows, so there would be no rounds
    x = np.random.default_rng(4).standard_normal((100_000, 128))
    reference = tmp_path / "reference"
    write_bank(reference, 0, x)
    _run(reference, 0, 0, SLOW_INIT)
    run = tmp_path / "killed"
    write_bank(run, 0, x)
    proc = subprocess.Popen(
        _cmd(run, 0, 2, SLOW_INIT), env=ENV, start_new_session=True, stderr=subprocess.PIPE, text=True
    )
    ckpt, deadline, started = checkpoints(run, 0, 2), time.monotonic() + 300, False
    while not started:
        assert proc.poll() is None, f"job ended during the wait: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "no init checkpoint appeared"
        found = ckpt.load_latest() if ckpt.steps() else None
        started = found is not None and found[1]["meta"].get("init_round", 0) >= 1
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # mpiexec and both ranks, mid-init
    proc.wait(timeout=120)
    state = ckpt.load_latest()[1]  # a round may have finished before the kill landed
    saved = state["meta"]["init_round"]
    assert "centroids" not in state and 1 <= saved < 5
    assert not (run / "labels/epoch-0000/COMPLETE").exists()
    stats = _run(run, 0, 1, SLOW_INIT)
    assert stats["init_resumed_after_round"] == saved  # the finished rounds are not redone
    assert np.array_equal(_labels(run), _labels(reference))
    assert np.array_equal(_centroids(run), _centroids(reference))
