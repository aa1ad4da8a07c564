"""RCC's behaviour on data with known structure (the paper's claims) and the degenerate-label guard.

RCC is compared with k-means given the true number of clusters, the most k-means can be told.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_mutual_info_score

from dcssl.cluster import ClusterConfig, rcc
from dcssl.cluster.exact import SingleComm
from dcssl.cluster.health import label_warnings
from dcssl.cluster.job import run_cluster
from dcssl.epochs.features import write_bank
from dcssl.jsonl import read_jsonl
from dcssl.paths import RunPaths
from dcssl.pipeline.local import StepFailed, run_local
from dcssl.pipeline.report import epoch_table, publish_epoch
from dcssl.pipeline.state import RunState
from dcssl.pipeline.steps import Step
from dcssl.train.segment import SegmentError, load_labels
from hpc.submit import ExecutorConfig


def _embed(x: np.ndarray, rng) -> np.ndarray:
    """The 2-d structure plus 8 dimensions of small noise: RCC's regime is not the plane (there the
    shortest 1 % of kNN edges, which set δ and ε, are far shorter than a typical edge)."""
    return np.concatenate([x, 0.3 * rng.standard_normal((len(x), 8))], axis=1)


def _varying_densities(rng):
    """Three blobs whose spreads differ 4× and sizes 7.5×."""
    centres, spreads, sizes = np.array([[0, 0], [5, 0], [0, 8.0]]), [0.3, 0.6, 1.2], [200, 600, 1500]
    x = np.concatenate([c + s * rng.standard_normal((n, 2)) for c, s, n in zip(centres, spreads, sizes)])
    return _embed(x, rng), np.repeat(np.arange(3), sizes)


def _chain(rng):
    """Three parallel chains, 24 long and 3 apart: k-means cuts across them."""
    along = rng.uniform(0, 24, 1800)
    y = np.repeat(np.arange(3), 600)
    return _embed(np.stack([along, 3.0 * y + 0.25 * rng.standard_normal(1800)], axis=1), rng), y


def _noise(rng):
    """Four blobs plus 8 % points spread uniformly over the whole box (scored on the blobs)."""
    centres = np.array([[0, 0], [8, 0], [0, 8], [8, 8.0]])
    y = np.repeat(np.arange(4), 400)
    blobs = centres[y] + 0.8 * rng.standard_normal((1600, 2))
    x = np.concatenate([blobs, rng.uniform(-6, 14, (140, 2))])
    return _embed(x, rng), np.concatenate([y, np.full(140, -1)])


@pytest.mark.parametrize("make", [_varying_densities, _chain, _noise], ids=["densities", "chain", "noise"])
def test_rcc_beats_kmeans_told_the_true_k(make):
    """The bench's protocol (k-means with the K that RCC found), scored on the non-noise points."""
    x, y = make(np.random.default_rng(0))
    labels, info = rcc(x.astype(np.float32), dim=0)
    inliers = y >= 0
    ami_rcc = adjusted_mutual_info_score(y[inliers], labels[inliers])
    km = KMeans(info["clusters"], n_init=10, random_state=0).fit_predict(x)
    ami_km = adjusted_mutual_info_score(y[inliers], km[inliers])
    assert info["converged"] and 1 < info["clusters"] < len(x) // 20
    assert ami_rcc > ami_km, (ami_rcc, ami_km, info["clusters"])


def test_chains_defeat_kmeans_even_told_the_true_k():
    x, y = _chain(np.random.default_rng(0))
    labels, _ = rcc(x.astype(np.float32), dim=0)
    km = KMeans(3, n_init=10, random_state=0).fit_predict(x)
    assert adjusted_mutual_info_score(y, labels) > 0.5 > 0.1 > adjusted_mutual_info_score(y, km)


def test_weakly_separated_blobs_are_not_merged_by_a_hurried_schedule():
    """Five blobs in 32-d, centres ~1 σ apart per coordinate. When μ was halved whenever the objective
    moved by < 0.1 % (a relative test that fires on almost every iteration of a large objective),
    the non-convex stage lasted a few solves and two blobs ended as one cluster (largest 40 %)."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(5), 400)
    x = (rng.standard_normal((5, 32))[y] + rng.standard_normal((2000, 32))).astype(np.float32)
    labels, info = rcc(x)
    km = KMeans(info["clusters"], n_init=4, random_state=0).fit_predict(x)
    assert info["converged"] and np.bincount(labels).max() / len(x) < 0.25
    assert adjusted_mutual_info_score(y, labels) > max(0.95, adjusted_mutual_info_score(y, km))


def test_label_warnings_name_each_degenerate_case():
    assert label_warnings([10, 20, 30], 60, 0.5, 0.5) == []
    assert label_warnings([0, 60, 0], 60, 0.5, 0.5) == ["single cluster: every point has the same label"]
    assert label_warnings([5, 40, 15], 60, 0.5, 0.5) == ["largest cluster holds 66.7% of the points (> 50%)"]
    assert label_warnings([2] * 30, 60, 0.5, 0.5) == [
        "30 clusters for 60 points (≥ 50% of N): near-singletons"
    ]


def test_one_cluster_result_warns_everywhere_and_the_loop_refuses_to_train(tmp_path):
    rng = np.random.default_rng(1)
    write_bank(tmp_path, 0, rng.standard_normal((3000, 8)))
    stats = run_cluster(tmp_path, 0, ClusterConfig(k=1, pca_dim=0, block_rows=1024), SingleComm())
    expected = ["single cluster: every point has the same label"]
    assert stats["clusters_used"] == 1 and stats["warnings"] == expected
    on_disk = json.loads((tmp_path / "labels/epoch-0000/stats.json").read_text())
    assert on_disk["warnings"] == expected
    paths = RunPaths(tmp_path)
    publish_epoch(paths, 0)
    records = read_jsonl(paths.metrics)
    assert [r["warnings"] for r in records if r["kind"] in ("cluster", "epoch")] == [expected, expected]
    table = epoch_table(records)
    assert table[1].endswith(" !") and table[2].strip() == f"! WARNING: {expected[0]}"
    with pytest.raises(SegmentError, match="single cluster.*cluster.method=kmeans"):
        load_labels(tmp_path, 0, 3000)
    state = RunState(paths)
    with pytest.raises(StepFailed, match="train-0001 refused: labels of epoch 0 .* single cluster"):
        run_local([Step("train", 1)], paths, {"train": ExecutorConfig()}, state)
    assert state.step("train-0001")["status"] == "refused"
    assert not paths.logs.exists()  # nothing was started
