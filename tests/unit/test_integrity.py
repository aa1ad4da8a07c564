"""Checksums recorded with each artefact and checked by its readers: shards (file and per tile),
sealed COMPLETE folders, exports."""

from __future__ import annotations

import errno
import os

import h5py
import numpy as np
import pytest

from dcssl.store import Store
from dcssl.train.config import AugmentConfig
from dcssl.train.data import TileDataset
from dcssl.train.synthetic import make_store, write_pseudo_labels
from hpc.checkpoint import DiskFull, as_disk_full, atomic_write_bytes
from hpc.integrity import DamagedFile, check_sealed, read_sidecar, sha256_file, verify_sidecar


def _flip_inside_tile(shard, row: int) -> None:
    with h5py.File(shard, "r") as f:
        tile = f["tiles"][row].tobytes()
    data = bytearray(shard.read_bytes())
    at = data.find(tile) + len(tile) // 2
    data[at : at + 16] = bytes(b ^ 0xFF for b in data[at : at + 16])
    shard.write_bytes(bytes(data))


@pytest.mark.parametrize("encoding", ["jpeg", "raw"])
def test_a_garbled_tile_is_an_error_on_read_not_a_silent_decode(tmp_path, encoding):
    store = make_store(tmp_path / "store", n_shards=2, tiles_per_shard=20, encoding=encoding)
    shard = store.shard_path(1)
    assert store.shards[1].sha256 == read_sidecar(shard) == sha256_file(shard)  # in the manifest
    before = store.read_tile(20 + 7)
    _flip_inside_tile(shard, 7)
    with pytest.raises(DamagedFile, match=r"\.h5: tile 7 fails its CRC32"):
        store.read_tile(20 + 7)
    with pytest.raises(DamagedFile, match="checksum mismatch"):
        verify_sidecar(shard)
    assert np.array_equal(store.read_tile(20 + 6), Store(store.root).read_tile(26))  # the others read
    dataset = TileDataset(store.root, AugmentConfig(size=32, color="none"))
    with pytest.raises(DamagedFile, match="tile 7 fails its CRC32"):
        dataset.read_encoded(np.array([3, 27, 30]))
    assert len(dataset.read_encoded(np.array([3, 26, 30]))) == 3
    assert before.shape == (32, 32, 3)


def test_sealed_labels_name_the_edited_file(tmp_path):
    folder = write_pseudo_labels(tmp_path, 0, np.arange(50) % 5, 5)
    assert check_sealed(folder)["n"] == 50
    labels = np.fromfile(folder / "labels.i32", dtype=np.int32)
    labels[3] = 4  # still in range
    labels.tofile(folder / "labels.i32")
    with pytest.raises(DamagedFile, match=r"labels\.i32: checksum mismatch"):
        check_sealed(folder)
    (folder / "COMPLETE").write_text("")
    with pytest.raises(DamagedFile, match="COMPLETE: records no checksums"):
        check_sealed(folder)


def test_disk_full_is_one_line_with_sizes(tmp_path):
    err = as_disk_full(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x.bin")), tmp_path)
    assert isinstance(err, DiskFull) and str(err).startswith(
        f"no space left on {tmp_path}: needs ~1 MB, has "
    )
    assert as_disk_full(OSError(errno.EACCES, "denied"), tmp_path) is None
    assert as_disk_full(RuntimeError("unexpected pos 25893632 vs 25893528"), tmp_path) is not None
    atomic_write_bytes(tmp_path / "ok.bin", b"x")
    assert os.listdir(tmp_path) == ["ok.bin"]
