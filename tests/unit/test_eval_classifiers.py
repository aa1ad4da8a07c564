"""k-NN and linear probe on known features; label-fraction subsets; splits; .npz labelled sets."""

from __future__ import annotations

import numpy as np
import pytest

from dcssl.evaluate.knn import knn_accuracy, knn_predict
from dcssl.evaluate.labelled import (
    LabelledDataError,
    fraction_subset,
    ingest_npz,
    load_labelled,
    stratified_split,
)
from dcssl.evaluate.linear import linear_accuracy
from dcssl.store import Store


def _blobs(n_per_class: int, n_classes: int = 5, dim: int = 32, seed: int = 0):
    """Well separated classes: each a tight cloud around its own random direction."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_classes, dim)) * 5
    y = np.repeat(np.arange(n_classes), n_per_class)
    x = centres[y] + rng.normal(size=(len(y), dim))
    perm = rng.permutation(len(y))
    return x[perm].astype(np.float32), y[perm]


def test_knn_on_separable_features_is_perfect():
    x, y = _blobs(60)
    train_x, train_y = x[:200], y[:200]
    query_x, query_y = x[200:], y[200:]
    assert knn_accuracy(train_x, train_y, query_x, query_y, k=20) == 1.0


def test_knn_blocks_do_not_change_predictions():
    x, y = _blobs(50, seed=3)
    noisy = x + np.random.default_rng(0).normal(0, 6, x.shape).astype(np.float32)
    whole = knn_predict(x[:150], y[:150], noisy[150:], k=7, block=10_000)
    blocked = knn_predict(x[:150], y[:150], noisy[150:], k=7, block=13)
    np.testing.assert_array_equal(whole, blocked)


def test_knn_weights_votes_by_similarity():
    # at a low temperature one very close class-0 neighbour outweighs two farther class-1 ones;
    # at a high one the votes are nearly equal and the majority wins
    ref = np.array([[1.0, 0.0], [0.6, 0.8], [0.6, -0.8]], dtype=np.float32)
    labels = np.array([0, 1, 1])
    query = np.array([[1.0, 0.05]], dtype=np.float32)
    assert knn_predict(ref, labels, query, k=3, temperature=0.05)[0] == 0
    assert knn_predict(ref, labels, query, k=3, temperature=100.0)[0] == 1


def test_linear_probe_on_separable_features_is_perfect():
    x, y = _blobs(60, seed=2)
    accuracy, weight_decay = linear_accuracy(x[:200], y[:200], x[200:], y[200:])
    assert accuracy == 1.0
    assert weight_decay in (1e-4, 1e-3, 1e-2, 1e-1)


def test_linear_probe_beats_chance_on_overlapping_classes_and_is_deterministic():
    x, y = _blobs(100, n_classes=4, seed=5)
    x = x + np.random.default_rng(1).normal(0, 5, x.shape).astype(np.float32)
    first = linear_accuracy(x[:300], y[:300], x[300:], y[300:])
    assert first == linear_accuracy(x[:300], y[:300], x[300:], y[300:])
    assert first[0] > 0.5


def test_fraction_subsets_are_stratified_nested_and_keep_every_class():
    y = np.repeat(np.arange(4), [500, 300, 150, 7])
    one, ten, full = (fraction_subset(y, f, seed=3) for f in (0.01, 0.1, 1.0))
    assert np.bincount(y[one]).tolist() == [5, 3, 2, 1]  # round(1 %), at least one per class
    assert np.bincount(y[ten]).tolist() == [50, 30, 15, 1]
    assert len(full) == len(y)
    assert set(one) <= set(ten) <= set(full)
    np.testing.assert_array_equal(one, fraction_subset(y, 0.01, seed=3))


def test_stratified_split_keeps_class_proportions_and_singletons_in_train():
    y = np.repeat(np.arange(3), [10, 20, 1])
    train, test = stratified_split(y, 0.3, seed=0)
    assert np.bincount(y[test], minlength=3).tolist() == [3, 6, 0]
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(len(y)))


def _npz(path, n_train=40, n_test=20, size=8, seed=0, gray=False):
    rng = np.random.default_rng(seed)
    shape = (size, size) if gray else (size, size, 3)
    np.savez(
        path,
        train_images=rng.integers(0, 255, (n_train, *shape), dtype=np.uint8),
        train_labels=rng.integers(0, 3, (n_train, 1)),
        test_images=rng.integers(0, 255, (n_test, *shape), dtype=np.uint8),
        test_labels=rng.integers(0, 3, (n_test, 1)),
    )
    return path


def test_npz_train_is_reference_and_test_are_queries(tmp_path):
    data = load_labelled(_npz(tmp_path / "d.npz", gray=True))
    assert len(data.reference) == 40 and len(data.queries) == 20
    assert data.reference.read(np.array([3]))[0].shape == (8, 8, 3)  # grayscale → RGB


def test_npz_ingest_writes_a_labelled_store_with_split_shards_and_resumes(tmp_path):
    path = _npz(tmp_path / "d.npz")
    store = ingest_npz(path, tmp_path / "store", splits=("train", "test"))
    assert [s.slide_id for s in store.shards] == ["train", "test"] and len(store) == 60
    with np.load(path) as npz:
        np.testing.assert_array_equal(store.labels()[:40], npz["train_labels"].ravel())
        np.testing.assert_array_equal(store.read_tile(45), npz["test_images"][5])
    before = (tmp_path / "store" / "shards" / "train.h5").stat().st_mtime_ns
    ingest_npz(path, tmp_path / "store", splits=("train", "test"))  # re-run: nothing rewritten
    assert (tmp_path / "store" / "shards" / "train.h5").stat().st_mtime_ns == before
    data = load_labelled(tmp_path / "store")
    assert len(data.reference) == 40 and len(data.queries) == 20
    np.testing.assert_array_equal(
        data.queries.read(np.array([5]))[0], Store(tmp_path / "store").read_tile(45)
    )


def test_bad_labelled_inputs_name_the_problem(tmp_path):
    with pytest.raises(LabelledDataError, match="not found"):
        load_labelled(tmp_path / "missing.npz")
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(LabelledDataError, match="train_images/train_labels"):
        load_labelled(tmp_path / "x.npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(LabelledDataError, match="ingest"):
        load_labelled(tmp_path / "empty")
