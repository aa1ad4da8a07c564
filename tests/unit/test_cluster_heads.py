"""The cluster job with extra heads (cluster.extra_k) in one process, and the cluster stage's
cadence (loop.recluster_every): what lands on disk, through dcssl.epochs.labels only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import normalized_mutual_info_score

from dcssl.cluster import ClusterConfig
from dcssl.cluster.exact import SingleComm
from dcssl.cluster.job import run_cluster
from dcssl.config import load_run_config, save_run_config
from dcssl.epochs.features import write_bank
from dcssl.epochs.labels import LabelFilesError, head_count, read_centroids, sealed_head_labels, sealed_labels

N = 4000
REPO = Path(__file__).resolve().parents[2]


def _blobs() -> tuple[np.ndarray, np.ndarray]:
    return make_blobs(N, n_features=16, centers=8, random_state=0, cluster_std=0.8)


def test_each_extra_head_has_its_own_k_labels_and_centroids(tmp_path):
    x, y = _blobs()
    write_bank(tmp_path, 0, x)
    cfg = ClusterConfig(k=8, extra_k=[4, 16], pca_dim=8, block_rows=512, iterations=10, init_trials=2)
    stats = run_cluster(tmp_path, 0, cfg, SingleComm())
    out = tmp_path / "labels" / "epoch-0000"
    assert sorted(p.name for p in out.iterdir()) == [
        "COMPLETE",
        "centroids-h1.npy",
        "centroids-h2.npy",
        "centroids.npy",
        "labels-h1.i32",
        "labels-h2.i32",
        "labels.i32",
        "stats.json",
    ]
    assert set(json.loads((out / "COMPLETE").read_text())["sha256"]) == {
        p.name for p in out.iterdir() if p.name != "COMPLETE"
    }
    assert head_count(tmp_path, 0) == 2 and [h["k"] for h in stats["heads"]] == [4, 16]
    primary = sealed_labels(tmp_path, 0, N)
    assert normalized_mutual_info_score(y, primary) > 0.99
    for head, k in ((1, 4), (2, 16)):
        labels, got_k = sealed_head_labels(tmp_path, 0, N, head)
        assert got_k == k and labels.min() == 0 and labels.max() == k - 1
        assert stats["heads"][head - 1]["sizes"] == np.bincount(labels, minlength=k).tolist()
        assert read_centroids(tmp_path, 0, head).shape == (k, 8)
    assert stats["heads"][0]["seed"] != stats["heads"][1]["seed"] != stats["seed"]
    with pytest.raises(LabelFilesError, match="has 2 extra heads, training wants head 3"):
        sealed_head_labels(tmp_path, 0, N, 3)
    (out / "labels-h2.i32").write_bytes(b"\0" * 4 * N)  # damage: the seal names it
    with pytest.raises(LabelFilesError, match="labels-h2.i32"):
        sealed_head_labels(tmp_path, 0, N, 2)


def test_bad_extra_k_is_refused_naming_the_key():
    with pytest.raises(ValueError, match=r"extra_k must be a list of integers ≥ 2"):
        ClusterConfig(extra_k=[100, 1])
    with pytest.raises(ValueError, match="extra_k needs method: kmeans"):
        ClusterConfig(method="rcc", extra_k=[100])


def _stage(run: Path, epoch: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dcssl.cluster", str(run), "--epoch", str(epoch)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )


def test_recluster_every_2_reuses_the_labels_on_odd_epochs(tmp_path):
    x, _ = _blobs()
    rng = np.random.default_rng(0)
    cfg = load_run_config(
        None,
        None,
        [
            "loop.recluster_every=2",
            "cluster.k=8",
            "cluster.extra_k=[4]",
            "cluster.pca_dim=8",
            "cluster.iterations=5",
        ],
    )
    save_run_config(tmp_path, cfg)
    for epoch in range(4):
        write_bank(tmp_path, epoch, x + 0.3 * rng.standard_normal(x.shape))
        proc = _stage(tmp_path, epoch)
        assert proc.returncode == 0, proc.stderr[-3000:]
    stats = [json.loads((tmp_path / f"labels/epoch-{e:04d}/stats.json").read_text()) for e in range(4)]
    assert [s.get("reused_from") for s in stats] == [None, 0, None, 2]
    for epoch in (1, 3):
        for name in ("labels.i32", "labels-h1.i32", "centroids.npy", "centroids-h1.npy"):
            same = [(tmp_path / f"labels/epoch-{e:04d}" / name).read_bytes() for e in (epoch - 1, epoch)]
            assert same[0] == same[1], f"epoch {epoch}'s {name} is not epoch {epoch - 1}'s"
        assert stats[epoch]["epoch"] == epoch and stats[epoch]["nmi_prev"] is None
        assert (
            stats[epoch]["seconds"] == {"total": 0.0} and stats[epoch]["sizes"] == stats[epoch - 1]["sizes"]
        )
    assert 0 < stats[2]["nmi_prev"] <= 1  # epoch 2 clustered, compared with epoch 1 (= epoch 0's)
    cluster = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    cluster = [r for r in cluster if r["kind"] == "cluster"]
    assert [(r["epoch"], r.get("reused_from")) for r in cluster] == [(0, None), (1, 0), (2, None), (3, 2)]
    again = _stage(tmp_path, 3)
    assert again.returncode == 0 and len(cluster) == 4  # a finished reused epoch: no-op
    assert (
        sum(
            json.loads(line)["kind"] == "cluster"
            for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
        )
        == 4
    )
