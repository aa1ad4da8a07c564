"""The DeepCluster loop with re-clustering every 2 epochs and three clustering heads, end to end on
the real slide: the odd epochs reuse the labels (every head's), the even ones cluster, and a
launcher killed after a reused epoch resumes without redoing or skipping anything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
from slurm_helpers import wait_until
from test_launch_loop import TINY, fresh_run, launch, records, tiled_run  # noqa: F401 (fixture)

from dcssl.store import Store

CADENCE = [*TINY, "loop.recluster_every=2", "cluster.extra_k=[4,9]"]


def test_recluster_every_2_with_extra_heads_survives_a_killed_launcher(tiled_run, tmp_path):  # noqa: F811
    run = fresh_run(tiled_run, tmp_path)
    argv = [sys.executable, "-m", "dcssl.launch", "train", str(run), "--executor", "local", "--epochs", "3"]
    proc = subprocess.Popen(
        [*argv, *CADENCE], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    reused = run / "labels" / "epoch-0001" / "COMPLETE"
    try:
        wait_until(lambda: reused.is_file() or proc.poll() is not None, 600, 0.5, "epoch 1's labels")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert reused.is_file()
    launch("train", str(run), "--executor", "local", "--epochs", "3", *CADENCE)
    n = Store(run / "store").n_tiles
    folder = [run / "labels" / f"epoch-{e:04d}" for e in range(4)]
    stats = [json.loads((f / "stats.json").read_text()) for f in folder]
    assert [s.get("reused_from") for s in stats] == [None, 0, None, 2]
    assert all([h["k"] for h in s["heads"]] == [4, 9] for s in stats)
    for e in (1, 3):
        for name in ("labels.i32", "labels-h1.i32", "labels-h2.i32"):
            assert (folder[e] / name).read_bytes() == (folder[e - 1] / name).read_bytes()
    assert np.fromfile(folder[2] / "labels-h2.i32", dtype="<i4").shape == (n,)
    assert [(r["epoch"], r.get("reused_from")) for r in records(run, "cluster")] == [
        (0, None),
        (1, 0),
        (2, None),
        (3, 2),
    ]
    assert [r["epoch"] for r in records(run, "train_epoch")] == [0, 1, 2, 3]
    assert 0 <= records(run, "epoch", 2)[-1]["nmi_prev"] <= 1
    status = json.loads(launch("status", str(run), "--json").stdout.strip().splitlines()[-1])
    assert status["done"] == 1
    again = launch("train", str(run), "--executor", "local", "--epochs", "3", *CADENCE)
    assert "nothing to run" in again.stderr
