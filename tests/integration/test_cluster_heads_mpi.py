"""Extra clustering heads (cluster.extra_k) with real MPI ranks: every head's labels identical
for 1 and 2 ranks, and a job killed inside an extra head resumes (with another rank count) to
exactly the labels of an uninterrupted run, every head's."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from dcssl.cluster.store import checkpoints
from dcssl.epochs.features import write_bank
from hpc.mpi import mpiexec

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
FILES = (
    "labels.i32",
    "labels-h1.i32",
    "labels-h2.i32",
    "centroids.npy",
    "centroids-h1.npy",
    "centroids-h2.npy",
)


def _cmd(run: Path, ranks: int, overrides: list[str]) -> list[str]:
    base = [sys.executable, "-m", "dcssl.cluster", str(run), "--epoch", "0", *overrides]
    return base if ranks == 0 else [mpiexec(), "-n", str(ranks), *base]


def _run(run: Path, ranks: int, overrides: list[str]) -> dict:
    proc = subprocess.run(_cmd(run, ranks, overrides), env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((run / "labels/epoch-0000/stats.json").read_text())


def _files(run: Path) -> dict[str, bytes]:
    return {name: (run / "labels/epoch-0000" / name).read_bytes() for name in FILES}


HEADS = ["k=16", "extra_k=[8,32]", "pca_dim=12", "block_rows=1000", "iterations=8", "init_trials=2"]


def test_one_and_two_ranks_give_identical_labels_for_every_head(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((16, 24)) * 3)[rng.integers(0, 16, 12_000)] + rng.standard_normal((12_000, 24))
    runs = {r: tmp_path / f"r{r}" for r in (0, 2)}
    for ranks, run in runs.items():
        write_bank(run, 0, x)
        stats = _run(run, ranks, HEADS)
        assert [h["k"] for h in stats["heads"]] == [8, 32] and stats["ranks"] == max(ranks, 1)
    assert _files(runs[0]) == _files(runs[2])


# slow to converge (no structure, tol 0): ~60 iterations per head, so a kill lands inside head 2
SLOW = ["k=24", "extra_k=[12,48]", "pca_dim=16", "block_rows=2000", "iterations=300", "init=random"]


def test_killed_inside_an_extra_head_resumes_to_the_uninterrupted_labels(tmp_path):
    x = np.random.default_rng(1).standard_normal((40_000, 32))
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    for run in (reference, killed):
        write_bank(run, 0, x)
    _run(reference, 0, SLOW)
    proc = subprocess.Popen(
        _cmd(killed, 2, SLOW),
        env=ENV,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    head2 = checkpoints(killed, 0, 2, head=2)
    deadline = time.monotonic() + 300
    while not any(step >= 3 for step in head2.steps()):
        assert proc.poll() is None, f"job ended before head 2's iteration 3: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "head 2 never checkpointed"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # mpiexec and both ranks, inside head 2's k-means
    proc.wait(timeout=60)
    assert not (killed / "labels/epoch-0000/COMPLETE").exists()
    assert checkpoints(killed, 0, 2).steps() and checkpoints(killed, 0, 2, head=1).steps()
    _run(killed, 0, SLOW)  # one rank now
    assert _files(killed) == _files(reference)
    assert not (killed / "checkpoints/cluster/epoch-0000").exists()  # every head's are gone once complete
