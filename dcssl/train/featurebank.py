"""The feature bank: one N×d float16 file by global tile index per epoch, completed by a marker.

    RUN_DIR/features/epoch-NNNN/embeddings.f16   raw float16, N×d, C order
                                meta.json        {"n", "dim", "dtype", "epoch", "source", "stale_fraction"}
                                COMPLETE         written last: {"n", "sha256": {file: digest}}

Writers: any number of ranks write disjoint rows with ``os.pwrite`` of whole rows — byte-range
writes, never a shared writable mmap, because an mmap writes back whole pages and two NFS clients
writing different rows of one page would overwrite each other. Readers: ``open_bank`` memory-maps
the file read-only, so any number of readers can take any row ranges.

The file is created once per epoch, under a temporary name then renamed, initialised from the
previous epoch's bank (rows of tiles this epoch does not visit keep their last embedding) or
zeros. A run resumed after preemption finds it already there and keeps the rows written so far.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from hpc.checkpoint import atomic_path, atomic_write_text, temp_files
from hpc.integrity import seal

__all__ = [
    "bank_dir",
    "is_complete",
    "read_meta",
    "open_bank",
    "BankWriter",
    "prepare_bank",
    "finalize_bank",
    "write_bank",
]

EMBEDDINGS, META, COMPLETE = "embeddings.f16", "meta.json", "COMPLETE"


def bank_dir(run_dir: str | os.PathLike, epoch: int) -> Path:
    return Path(run_dir) / "features" / f"epoch-{epoch:04d}"


def is_complete(run_dir: str | os.PathLike, epoch: int) -> bool:
    return (bank_dir(run_dir, epoch) / COMPLETE).is_file()


def read_meta(run_dir: str | os.PathLike, epoch: int) -> dict:
    return json.loads((bank_dir(run_dir, epoch) / META).read_text())


def open_bank(run_dir: str | os.PathLike, epoch: int) -> np.memmap:
    """The complete bank of ``epoch`` as a read-only (n, dim) float16 memmap."""
    folder = bank_dir(run_dir, epoch)
    if not (folder / COMPLETE).is_file():
        raise FileNotFoundError(
            f"{folder}: feature bank is not complete; run train segment "
            f"{epoch} (python -m dcssl.train RUN_DIR --epoch {epoch}) first"
        )
    meta = read_meta(run_dir, epoch)
    return np.memmap(
        folder / EMBEDDINGS, dtype=np.float16, mode="r", shape=(int(meta["n"]), int(meta["dim"]))
    )


def prepare_bank(run_dir: str | os.PathLike, epoch: int, n: int, dim: int, init_from: int | None) -> Path:
    """Create epoch's embeddings file once (call on one rank, then a barrier). Idempotent."""
    path = bank_dir(run_dir, epoch) / EMBEDDINGS
    if path.is_file() and path.stat().st_size == n * dim * 2:
        return path  # a resumed segment: keep the rows already written
    for stale in temp_files(path):  # a killed earlier attempt's copy (rank 0 is the one writer)
        stale.unlink(missing_ok=True)
    with atomic_path(path, size_hint=n * dim * 2) as tmp:
        if init_from is not None:
            source = bank_dir(run_dir, init_from) / EMBEDDINGS
            meta = read_meta(run_dir, init_from)
            if (int(meta["n"]), int(meta["dim"])) != (n, dim):
                raise ValueError(
                    f"{source}: bank is {meta['n']}×{meta['dim']}, this epoch needs "
                    f"{n}×{dim}; the store or model.proj_dim changed — start a new run"
                )
            shutil.copyfile(source, tmp)
        else:
            with open(tmp, "wb") as handle:
                handle.truncate(n * dim * 2)  # sparse zeros
    return path


def finalize_bank(
    run_dir: str | os.PathLike, epoch: int, n: int, dim: int, source: str, stale_fraction: float
) -> None:
    """Write meta.json, then COMPLETE (both atomic). Call on one rank after every writer synced."""
    folder = bank_dir(run_dir, epoch)
    meta = {
        "n": n,
        "dim": dim,
        "dtype": "float16",
        "epoch": epoch,
        "source": source,
        "stale_fraction": round(float(stale_fraction), 6),
    }
    atomic_write_text(folder / META, json.dumps(meta, indent=1))
    seal(folder, (EMBEDDINGS, META), n=n)


def write_bank(
    run_dir: str | os.PathLike, epoch: int, features: np.ndarray, source: str = "external"
) -> Path:
    """A complete bank for ``epoch`` from an in-memory n×dim array — features computed elsewhere,
    to cluster them with ``python -m dcssl.cluster RUN --epoch E``. One process."""
    n, dim = features.shape
    path = prepare_bank(run_dir, epoch, n, dim, None)
    writer = BankWriter(path, n, dim)
    try:
        writer.write_rows(np.arange(n), features)
    finally:
        writer.close()
    finalize_bank(run_dir, epoch, n, dim, source, 0.0)
    return path


class BankWriter:
    """Writes rows of one epoch's embeddings file by global index (one instance per rank)."""

    def __init__(self, path: str | os.PathLike, n: int, dim: int):
        self.path, self.n, self.dim = Path(path), n, dim
        self.row_bytes = dim * 2
        self._fd = os.open(self.path, os.O_WRONLY)

    def write_rows(self, index: np.ndarray, rows: np.ndarray) -> None:
        """Write ``rows`` (k×dim) at global indices ``index``; runs of consecutive indices go out
        in one call."""
        index = np.asarray(index, dtype=np.int64)
        if index.size == 0:
            return
        if index.min() < 0 or index.max() >= self.n:
            raise IndexError(f"feature row out of range [0, {self.n})")
        order = np.argsort(index, kind="stable")
        index, rows = index[order], np.ascontiguousarray(rows[order], dtype=np.float16)
        breaks = np.flatnonzero(np.diff(index) != 1) + 1
        for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, index.size]):
            self._pwrite(rows[lo:hi].tobytes(), int(index[lo]) * self.row_bytes)

    def _pwrite(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:  # pwrite may write less than asked
            done = os.pwrite(self._fd, view, offset)
            view, offset = view[done:], offset + done

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
