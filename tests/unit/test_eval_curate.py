"""curate: exactly N per cluster (all of a smaller one), spread evenly over equal-frequency distance
bins, deterministic, written as a selection manifest and a real store of the chosen tiles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dcssl.evaluate.config import CurateConfig
from dcssl.evaluate.curate import CurateError, curate_run, sample_cluster, select
from dcssl.launch.__main__ import main as launch
from dcssl.store import Store
from dcssl.train.synthetic import make_store
from hpc.checkpoint import atomic_write_text

SIZES = [200, 120, 7]  # the last cluster is smaller than per_cluster; 327 = 3 shards × 109


def _features(labels: np.ndarray, dim: int = 16, seed: int = 0) -> np.ndarray:
    """Each cluster a direction plus noise whose size varies, so distances to the centre vary."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(labels.max() + 1, dim)) * 4
    spread = rng.uniform(0.1, 3.0, size=(len(labels), 1))
    return (centres[labels] + spread * rng.normal(size=(len(labels), dim))).astype(np.float16)


def _clustered_run(root: Path, epoch: int = 2) -> tuple[Path, np.ndarray, np.ndarray]:
    """A run whose store, labels and features of ``epoch`` are laid out as the loop writes them."""
    n_tiles = sum(SIZES)
    make_store(root / "store", n_shards=3, tiles_per_shard=n_tiles // 3, size=16)
    labels = np.random.default_rng(1).permutation(np.repeat(np.arange(len(SIZES)), SIZES))
    labels = labels.astype(np.int32)
    features = _features(labels)
    lab = root / "labels" / f"epoch-{epoch:04d}"
    feat = root / "features" / f"epoch-{epoch:04d}"
    lab.mkdir(parents=True)
    feat.mkdir(parents=True)
    labels.tofile(lab / "labels.i32")
    atomic_write_text(lab / "COMPLETE", "")
    features.tofile(feat / "embeddings.f16")
    atomic_write_text(
        feat / "meta.json", json.dumps({"n": n_tiles, "dim": features.shape[1], "dtype": "float16"})
    )
    atomic_write_text(feat / "COMPLETE", "")
    return root, labels, features


def test_sample_cluster_takes_the_same_number_from_every_bin():
    distances = np.random.default_rng(0).gamma(2.0, size=1000)
    picks, bins = sample_cluster(distances, 50, 10, np.random.default_rng(3))
    assert len(picks) == len(set(picks)) == 50
    assert np.bincount(bins).tolist() == [5] * 10
    edges = np.quantile(distances, np.linspace(0, 1, 11))  # equal-frequency bin edges
    for b in range(10):
        chosen = distances[picks[bins == b]]
        assert edges[b] <= chosen.min() and chosen.max() <= edges[b + 1]


def test_sample_cluster_spreads_a_remainder_and_never_overdraws():
    distances = np.arange(23, dtype=float)
    picks, bins = sample_cluster(distances, 7, 3, np.random.default_rng(0))
    assert sorted(np.bincount(bins).tolist()) == [2, 2, 3] and len(set(picks)) == 7
    picks, _ = sample_cluster(distances[:4], 10, 5, np.random.default_rng(0))
    assert sorted(picks.tolist()) == [0, 1, 2, 3]


def test_select_picks_n_per_cluster_across_bins_deterministically(tmp_path):
    _, labels, features = _clustered_run(tmp_path)
    cfg = CurateConfig(per_cluster=40, bins=4, seed=5)
    chosen = select(labels, features, cfg)
    sizes = np.bincount(labels)
    assert np.bincount(chosen["cluster"]).tolist() == [min(40, s) for s in sizes]
    for c in (0, 1):
        assert np.bincount(chosen["bin"][chosen["cluster"] == c]).tolist() == [10] * 4
    assert (labels[chosen["source_index"]] == chosen["cluster"]).all()
    again = select(labels, features, cfg)
    np.testing.assert_array_equal(chosen["source_index"], again["source_index"])
    other = select(labels, features, CurateConfig(per_cluster=40, bins=4, seed=6))
    assert not np.array_equal(chosen["source_index"], other["source_index"])


def test_curate_writes_a_selection_and_a_store_of_the_chosen_tiles(tmp_path, capsys):
    run, labels, _ = _clustered_run(tmp_path / "run")
    assert launch(["curate", str(run), "--per-cluster", "30", "curate.bins=3"]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["epoch"] == 2 and last["n_tiles"] == 30 + 30 + np.bincount(labels)[2]
    document = json.loads((run / "curated" / "manifest.json").read_text())
    source, curated = Store(run / "store"), Store(run / "curated" / "store")
    rows = [(shard["name"], r) for shard in document["shards"] for r in shard["rows"]]
    chosen = np.load(run / "curated" / "selection.npz")["source_index"]
    assert len(rows) == len(curated) == len(chosen) == last["n_tiles"]
    shard, row = source.locate(chosen)
    assert rows == [(source.shards[s].name, int(r)) for s, r in zip(shard, row)]
    np.testing.assert_array_equal(curated.labels(), source.labels()[chosen])
    for j in (0, 17, len(chosen) - 1):
        np.testing.assert_array_equal(curated.read_tile(j), source.read_tile(int(chosen[j])))
    stamp = (run / "curated" / "manifest.json").stat().st_mtime_ns
    assert launch(["curate", str(run), "--per-cluster", "30", "curate.bins=3"]) == 0
    assert (run / "curated" / "manifest.json").stat().st_mtime_ns == stamp  # nothing redone
    assert launch(["curate", str(run), "--per-cluster", "5", "curate.copy_tiles=false"]) == 0
    assert json.loads((run / "curated" / "manifest.json").read_text())["n_tiles"] == 5 + 5 + 5
    assert not (run / "curated" / "store").exists()


def test_curate_without_clustering_is_a_one_line_error(tmp_path, capsys):
    make_store(tmp_path / "run" / "store", n_shards=1, tiles_per_shard=4, size=16)
    with pytest.raises(CurateError, match="train and cluster the run first"):
        curate_run(tmp_path / "run", CurateConfig())
    assert launch(["curate", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
