"""The per-epoch cluster job in one process: on-disk contract, re-runs, errors, RCC, PCA, quality."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import normalized_mutual_info_score

from dcssl.cluster import ClusterConfig, RCCConfig, kmeans, pca_fit, pca_transform, rcc
from dcssl.cluster.exact import SingleComm
from dcssl.cluster.job import run_cluster
from dcssl.epochs.features import write_bank

DATA = Path(__file__).resolve().parents[1] / "data" / "bloodmnist.npz"


def test_outputs_follow_the_contract(tmp_path):
    x, y = make_blobs(5000, n_features=20, centers=8, random_state=0, cluster_std=0.8)
    write_bank(tmp_path, 0, x)
    write_bank(tmp_path, 1, x + 0.01)
    cfg = ClusterConfig(k=8, pca_dim=10, block_rows=1024, iterations=15, init_trials=2)
    stats = run_cluster(tmp_path, 0, cfg, SingleComm())
    out = tmp_path / "labels" / "epoch-0000"
    labels = np.fromfile(out / "labels.i32", dtype="<i4")
    assert sorted(p.name for p in out.iterdir()) == ["COMPLETE", "centroids.npy", "labels.i32", "stats.json"]
    assert len(labels) == 5000 and normalized_mutual_info_score(y, labels) > 0.99
    assert np.load(out / "centroids.npy").shape == (8, 10)
    assert stats["sizes"] == np.bincount(labels, minlength=8).tolist()
    assert stats["nmi_prev"] is None and stats["clusters_used"] == 8
    assert set(stats["seconds"]) >= {"pca_fit", "transform", "init", "kmeans", "write", "total"}
    assert not (tmp_path / "checkpoints" / "cluster" / "epoch-0000").exists()
    second = run_cluster(tmp_path, 1, cfg, SingleComm())
    labels1 = np.fromfile(tmp_path / "labels/epoch-0001/labels.i32", dtype="<i4")
    assert second["nmi_prev"] == pytest.approx(normalized_mutual_info_score(labels, labels1))
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(m["kind"], m["epoch"]) for m in metrics] == [("cluster", 0), ("cluster", 1)]
    assert set(metrics[1]) >= {
        "k",
        "iterations",
        "inertia",
        "nmi_prev",
        "clusters_used",
        "empty_split",
        "largest_share",
        "seconds",
    }
    assert run_cluster(tmp_path, 1, cfg, SingleComm()) == json.loads(
        (tmp_path / "labels/epoch-0001/stats.json").read_text()
    )  # finished: no-op
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dcssl.cluster", *args], capture_output=True, text=True, timeout=120
    )


def test_cli_errors_are_one_line(tmp_path):
    proc = _cli(str(tmp_path), "--epoch", "3")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "epoch-0003" in proc.stderr and "training segment" in proc.stderr
    proc = _cli(str(tmp_path), "--epoch", "0", "k=0")
    assert proc.returncode == 2 and proc.stderr.strip() == "error: cluster: k must be ≥ 1, got 0"
    proc = _cli(str(tmp_path), "--epoch", "0", "cluster.kk=3")
    assert proc.returncode == 2 and "cluster.kk: unknown key" in proc.stderr
    write_bank(tmp_path, 0, np.ones((10, 4)))
    (tmp_path / "features/epoch-0000/meta.json").write_text('{"n": 11, "dim": 4}')
    proc = _cli(str(tmp_path), "--epoch", "0")  # the default k = 1,000 cannot split 11 rows
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: cluster.k=1000")
    proc = _cli(str(tmp_path), "--epoch", "0", "k=2")
    assert proc.returncode == 1 and "expected n×dim×2" in proc.stderr


def test_rcc_recovers_blobs_without_k():
    x, y = make_blobs(3000, n_features=10, centers=6, random_state=3, cluster_std=0.7, center_box=(-15, 15))
    labels, info = rcc(x.astype(np.float32), dim=0)
    assert normalized_mutual_info_score(y, labels) > 0.99
    assert info["clusters"] == 6


def test_rcc_method_in_the_job(tmp_path):
    x, y = make_blobs(6000, n_features=16, centers=5, random_state=4, cluster_std=0.5, center_box=(-10, 10))
    write_bank(tmp_path, 0, x)
    # Whitening lifts the noise-only directions to unit variance, which RCC's graph feels: off.
    cfg = ClusterConfig(
        method="rcc", pca_dim=8, whiten=False, block_rows=1024, rcc=RCCConfig(sample=2000, dim=0, min_size=5)
    )
    stats = run_cluster(tmp_path, 0, cfg, SingleComm())
    labels = np.fromfile(tmp_path / "labels/epoch-0000/labels.i32", dtype="<i4")
    assert normalized_mutual_info_score(y, labels) > 0.99  # sample → every point via assignment
    assert stats["k"] == 5 and stats["rcc"]["clusters"] >= 5


def test_pca_whitening_gives_identity_covariance():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((4000, 12)) @ rng.standard_normal((12, 12)) + 5).astype(np.float32)
    pca = pca_fit(x, 6, block=1000)
    y = pca_transform(x, pca, l2_normalize=False, block=1000)
    np.testing.assert_allclose(np.cov(y.T, bias=True), np.eye(6), atol=1e-4)
    values = np.sort(np.linalg.eigvalsh(np.cov(x.T.astype(np.float64), bias=True)))[::-1][:6]
    np.testing.assert_allclose(pca.eigenvalues, values, rtol=1e-6)
    z = pca_transform(x, pca, block=1000)
    np.testing.assert_allclose(np.linalg.norm(z, axis=1), 1.0, rtol=1e-5)


def test_bloodmnist_pixels_nmi_at_least_sklearn():
    data = np.load(DATA)
    x = np.concatenate([data[f"{s}_images"] for s in ("train", "val", "test")])
    x = x.reshape(len(x), -1).astype(np.float32)
    y = np.concatenate([data[f"{s}_labels"] for s in ("train", "val", "test")]).ravel()
    ours = kmeans(x, 8, iterations=100, tol=0.0, seed=0)[1]
    theirs = KMeans(8, random_state=0).fit(x).labels_
    nmi_ours = normalized_mutual_info_score(y, ours)
    nmi_sklearn = normalized_mutual_info_score(y, theirs)
    assert nmi_ours >= nmi_sklearn, (nmi_ours, nmi_sklearn)
