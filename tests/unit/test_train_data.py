"""The store dataset: batched reads in request order, lazy per-process HDF5 handles, locking
switch, labels kept in the training process, identical batches with or without workers."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from dcssl.store import Store
from dcssl.train.config import AugmentConfig
from dcssl.train.data import TileDataset, make_loader
from dcssl.train.sampler import UniformClusterSampler
from dcssl.train.synthetic import make_store


@pytest.fixture(scope="module")
def raw_store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("raw"), n_shards=3, tiles_per_shard=40, size=24, encoding="raw")


@pytest.fixture(scope="module")
def jpeg_store(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("jpeg"), n_shards=2, tiles_per_shard=50, size=32)


def _uint8_view(store: Store, **kw) -> TileDataset:
    return TileDataset(store.root, AugmentConfig(size=32), transform_in_worker=False, **kw)


def test_tiles_come_back_in_request_order_across_shards(raw_store):
    ds = _uint8_view(raw_store)
    index = np.array([119, 0, 41, 41, 80, 5, 79, 40, 118])  # shard edges, repeats, any order
    batch = ds.__getitems__(index.tolist())
    assert torch.equal(batch["index"], torch.from_numpy(index))
    for row, i in enumerate(index):
        expected = torch.from_numpy(raw_store.read_tile(int(i))).permute(2, 0, 1)
        assert torch.equal(batch["images"][row], expected)
    consecutive = ds.__getitems__(list(range(30, 70)))  # the slice path of extraction
    assert torch.equal(consecutive["images"][15], torch.from_numpy(raw_store.read_tile(45)).permute(2, 0, 1))


def test_jpeg_bytes_come_back_in_request_order_with_few_open_files(jpeg_store):
    ds = _uint8_view(jpeg_store, max_open=1)
    index = [99, 3, 3, 50, 49, 4, 5, 6, 0]  # shard edge, repeats, a consecutive run
    got = ds.read_encoded(np.array(index))
    assert len(ds._files) == 1  # least recently used shards are closed
    for i, data in zip(index, got):
        shard, row = jpeg_store.locate(i)
        with jpeg_store.open_shard(int(shard)) as f:
            assert np.array_equal(data, f["tiles"][int(row)])
    ds.close()


def test_jpeg_tiles_decode_like_the_store(jpeg_store):
    ds = _uint8_view(jpeg_store)
    batch = ds.__getitems__([3, 77])
    ds.close()
    for row, i in enumerate((3, 77)):
        pil = torch.from_numpy(jpeg_store.read_tile(i).copy()).permute(2, 0, 1).int()
        assert (batch["images"][row].int() - pil).abs().max() <= 2  # libjpeg IDCT rounding


def test_hdf5_files_open_lazily_per_process_with_the_locking_switch(jpeg_store):
    ds = _uint8_view(jpeg_store, locking=False)
    assert ds._files == {}  # nothing open at construction: safe to fork workers
    ds.__getitems__([0, 60])
    assert set(ds._files) == {0, 1}
    assert ds._files[0].handle.id.get_access_plist().get_file_locking()[0] == 0
    assert pickle.loads(pickle.dumps(ds))._files == {}  # handles never travel
    ds.close()  # HDF5 refuses one file open twice in a process with different locking flags
    assert ds._files == {}
    locked = _uint8_view(jpeg_store, locking=True)
    locked.__getitems__([0])
    assert locked._files[0].handle.id.get_access_plist().get_file_locking()[0] == 1
    locked.close()


def test_training_batches_are_identical_with_and_without_workers(jpeg_store):
    labels = jpeg_store.labels().astype(np.int32)

    def batches(workers: int) -> list[dict]:
        ds = TileDataset(jpeg_store.root, AugmentConfig(size=24, color="both"))
        sampler = UniformClusterSampler(labels, seed=4)
        loader = make_loader(ds, batch_size=16, sampler=sampler, workers=workers)
        out = list(loader)
        assert ds._files == {} or workers == 0  # the workers opened their own handles
        return out

    inline, forked = batches(0), batches(2)
    assert len(inline) == len(forked) == 100 // 16
    for a, b in zip(inline, forked):
        assert torch.equal(a["index"], b["index"]) and torch.equal(a["owner"], b["owner"])
        assert torch.equal(a["images"], b["images"])
        assert a["images"].shape == (16, 3, 24, 24)


def test_labels_live_in_the_training_process(jpeg_store):
    ds = _uint8_view(jpeg_store)
    with pytest.raises(RuntimeError, match="set_labels"):
        ds.labels_for(torch.tensor([0]))
    labels = np.arange(100, dtype=np.int32) % 7
    ds.set_labels(labels)
    assert ds.labels_for(torch.tensor([8, 99])).tolist() == [1, 1]
    ds.set_labels(labels[::-1].copy())
    assert ds.labels_for(torch.tensor([8, 99])).tolist() == [labels[91], labels[0]]
    with pytest.raises(ValueError, match="100 tiles"):
        ds.set_labels(labels[:50])


def test_device_augmentation_mode_returns_tiles_and_uniforms(jpeg_store):
    ds = _uint8_view(jpeg_store)
    batch = ds.__getitems__([(1, 10, True), (2, 11, False)])
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape == (2, 3, 32, 32)
    assert batch["u"].shape[0] == 2 and batch["owner"].tolist() == [True, False]
    empty = ds.__getitems__([])
    assert empty["images"].shape[0] == 0
