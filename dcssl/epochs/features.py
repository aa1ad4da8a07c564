"""The feature bank: one N×d float16 file by global tile index per epoch, completed by a marker.
Its one writer and its readers (train writes it; cluster, curate, report and verify read it).

    RUN_DIR/features/epoch-NNNN/embeddings.f16   raw float16, N×d, C order
                                meta.json        {"n", "dim", "dtype", "epoch", "source", "stale_fraction"}
                                COMPLETE         written last: {"n", "sha256": {file: digest}}

Writers: any number of ranks write disjoint rows with ``os.pwrite`` of whole rows — byte-range
writes, never a shared writable mmap, because an mmap writes back whole pages and two NFS clients
writing different rows of one page would overwrite each other. A writer buffers rows and writes
them sorted by index in runs of consecutive rows, so a page is written once per flush rather than
once per 512-byte row. Readers: ``open_bank`` memory-maps the file read-only, so any number of
readers can take any row ranges.

The file is created once per epoch, under a temporary name then renamed, as sparse zeros — no copy
of the previous epoch's bank (15 GB at 30 M tiles) at the start of every epoch. Rows of tiles this
epoch did not visit keep their last embedding all the same: at the end, every rank fills the
unwritten rows of its own row range from the previous epoch's bank (``fill_unvisited``; a written
row is an L2-normalised embedding, never all zeros), reading both in blocks and writing only the
unvisited rows, in sorted runs. A run resumed after preemption finds the file already there and
keeps the rows written so far; an interrupted fill is simply done again.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcssl.paths import RunPaths, epochs_in
from hpc.checkpoint import atomic_path, atomic_write_text, temp_files
from hpc.config import ConfigError, read_text_file
from hpc.integrity import check_sealed, seal
from hpc.mpi import shard_range

__all__ = [
    "bank_dir",
    "is_complete",
    "complete_epochs",
    "verify",
    "read_meta",
    "bank_rows",
    "embeddings_path",
    "open_bank",
    "bank_if_complete",
    "FeatureBank",
    "open_features",
    "BankWriter",
    "prepare_bank",
    "finalize_bank",
    "fill_unvisited",
    "write_bank",
]

EMBEDDINGS, META = "embeddings.f16", "meta.json"
"""The bank's files; COMPLETE records the SHA-256 of both."""


def bank_dir(run_dir: str | os.PathLike, epoch: int) -> Path:
    return RunPaths(Path(run_dir)).features(epoch)


def embeddings_path(run_dir: str | os.PathLike, epoch: int) -> Path:
    """The N×d float16 file that ``BankWriter`` writes rows of."""
    return bank_dir(run_dir, epoch) / EMBEDDINGS


def is_complete(run_dir: str | os.PathLike, epoch: int) -> bool:
    return RunPaths(Path(run_dir)).features_complete(epoch)


def complete_epochs(run_dir: str | os.PathLike) -> list[int]:
    """Epochs whose bank is complete (older ones are pruned), oldest first."""
    return [e for e in epochs_in(RunPaths(Path(run_dir)).features_root) if is_complete(run_dir, e)]


def verify(run_dir: str | os.PathLike, epoch: int) -> dict:
    """The bank's COMPLETE document after checking its files' SHA-256; DamagedFile otherwise."""
    return check_sealed(bank_dir(run_dir, epoch))


def read_meta(run_dir: str | os.PathLike, epoch: int) -> dict:
    return json.loads((bank_dir(run_dir, epoch) / META).read_text())


def bank_rows(run_dir: str | os.PathLike, epoch: int, missing_ok: bool = False) -> int | None:
    """Rows of the epoch's bank from its meta.json, to check settings against before any work: a
    one-line ConfigError when it is unreadable (None when it is missing and ``missing_ok``)."""
    meta = bank_dir(run_dir, epoch) / META
    if missing_ok and not meta.is_file():
        return None
    text = read_text_file(meta)
    try:
        return int(json.loads(text)["n"])
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"{meta}: not a feature bank's meta.json; run `launch train` again") from None


def open_bank(run_dir: str | os.PathLike, epoch: int) -> np.memmap:
    """The complete bank of ``epoch`` as a read-only (n, dim) float16 memmap."""
    folder = bank_dir(run_dir, epoch)
    if not is_complete(run_dir, epoch):
        raise FileNotFoundError(
            f"{folder}: feature bank is not complete; run train segment "
            f"{epoch} (python -m dcssl.train RUN_DIR --epoch {epoch}) first"
        )
    meta = read_meta(run_dir, epoch)
    return np.memmap(
        folder / EMBEDDINGS, dtype=np.float16, mode="r", shape=(int(meta["n"]), int(meta["dim"]))
    )


def bank_if_complete(run_dir: str | os.PathLike, epoch: int) -> np.memmap | None:
    """The bank of ``epoch`` (read-only n×d float16 memmap), or None when pruned or unfinished."""
    return open_bank(run_dir, epoch) if is_complete(run_dir, epoch) else None


@dataclass(frozen=True)
class FeatureBank:
    """A checked bank, read by row ranges (each cluster rank maps only its own rows)."""

    path: Path
    n: int
    dim: int

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Memory-map only rows [start, stop) (float16)."""
        if stop <= start:
            return np.zeros((0, self.dim), dtype=np.float16)
        return np.memmap(
            self.path, dtype=np.float16, mode="r", offset=start * self.dim * 2, shape=(stop - start, self.dim)
        )


def open_features(run_dir: str | os.PathLike, epoch: int) -> FeatureBank:
    """Validate epoch ``epoch``'s feature bank for clustering; ValueError with the fix otherwise."""
    folder = bank_dir(run_dir, epoch)
    if not is_complete(run_dir, epoch):
        raise ValueError(
            f"{folder}: no COMPLETE marker — the features of epoch {epoch} are missing "
            "or unfinished; run (or finish) that epoch's training segment first"
        )
    n, dim = _checked_shape(folder / META)
    path = folder / EMBEDDINGS
    size = path.stat().st_size if path.is_file() else -1
    if size != n * dim * 2:
        raise ValueError(
            f"{path}: {size} bytes, expected n×dim×2 = {n * dim * 2} "
            "(truncated or wrong meta.json) — re-extract the features"
        )
    if n < 2:
        raise ValueError(f"{path}: only {n} rows; clustering needs at least 2")
    return FeatureBank(path, n, dim)


def _checked_shape(meta_path: Path) -> tuple[int, int]:
    """(n, dim) of a float16 bank's meta.json; ValueError naming the file otherwise."""
    try:
        meta = json.loads(meta_path.read_text())
        n, dim, dtype = int(meta["n"]), int(meta["dim"]), meta.get("dtype", "float16")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{meta_path}: unreadable ({err}); it must hold "
            '{"n": N, "dim": D, "dtype": "float16"} — re-extract the features'
        ) from None
    if dtype != "float16":
        raise ValueError(f"{meta_path}: dtype {dtype!r} is not supported; the feature bank must be float16")
    return n, dim


def prepare_bank(run_dir: str | os.PathLike, epoch: int, n: int, dim: int, init_from: int | None) -> Path:
    """Create epoch's embeddings file once, sparse zeros (call on one rank, then a barrier).
    Idempotent. ``init_from``: the epoch whose bank seeds the unvisited rows (checked here, read
    by ``fill_unvisited``)."""
    path = embeddings_path(run_dir, epoch)
    if init_from is not None:
        meta = read_meta(run_dir, init_from)
        if (int(meta["n"]), int(meta["dim"])) != (n, dim):
            raise ValueError(
                f"{embeddings_path(run_dir, init_from)}: bank is {meta['n']}×{meta['dim']}, "
                f"this epoch needs {n}×{dim}; the store or model.proj_dim changed — start a new run"
            )
    if path.is_file() and path.stat().st_size == n * dim * 2:
        return path  # a resumed segment: keep the rows already written
    for stale in temp_files(path):  # a killed earlier attempt's file (rank 0 is the one writer)
        stale.unlink(missing_ok=True)
    with atomic_path(path, size_hint=n * dim * 2) as tmp:
        with open(tmp, "wb") as handle:
            handle.truncate(n * dim * 2)  # sparse zeros
    return path


def fill_unvisited(
    run_dir: str | os.PathLike, epoch: int, init_from: int, rank: int, world: int, block_rows: int = 1 << 16
) -> int:
    """Copy the previous epoch's rows into the rows of ``rank``'s share that this epoch did not
    write (all zeros); after every writer closed, on every rank, then a barrier. The share is
    this rank's alone by then, so each block goes out whole, in one sequential write. Returns
    the rows filled."""
    path = embeddings_path(run_dir, epoch)
    meta = read_meta(run_dir, init_from)
    n, dim = int(meta["n"]), int(meta["dim"])
    new = np.memmap(path, dtype=np.float16, mode="r", shape=(n, dim))
    old = open_bank(run_dir, init_from)
    start, stop = shard_range(n, rank, world)
    writer, filled = BankWriter(path, n, dim, buffer_rows=block_rows), 0
    try:
        for lo in range(start, stop, block_rows):
            block = np.array(new[lo : min(lo + block_rows, stop)])
            unwritten = ~block.any(axis=1)
            if unwritten.any():
                block[unwritten] = old[lo : lo + block.shape[0]][unwritten]
                writer.write_rows(np.arange(lo, lo + block.shape[0]), block)
                filled += int(unwritten.sum())
    finally:
        writer.close()
    return filled


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
    """Writes rows of one epoch's embeddings file by global index (one instance per rank).

    Rows are buffered (``buffer_rows``) and written sorted, in runs of consecutive indices, when
    the buffer fills and at ``sync``/``close``: call ``sync`` before recording progress.
    """

    def __init__(self, path: str | os.PathLike, n: int, dim: int, buffer_rows: int = 1 << 16):
        self.path, self.n, self.dim = Path(path), n, dim
        self.row_bytes, self.buffer_rows = dim * 2, buffer_rows
        self._index: list[np.ndarray] = []
        self._rows: list[np.ndarray] = []
        self._buffered = 0
        self._fd = os.open(self.path, os.O_WRONLY)

    def write_rows(self, index: np.ndarray, rows: np.ndarray) -> None:
        """Write ``rows`` (k×dim) at global indices ``index`` (buffered)."""
        index = np.asarray(index, dtype=np.int64)
        if index.size == 0:
            return
        if index.min() < 0 or index.max() >= self.n:
            raise IndexError(f"feature row out of range [0, {self.n})")
        self._index.append(index)
        self._rows.append(np.asarray(rows, dtype=np.float16).reshape(index.size, self.dim))
        self._buffered += index.size
        if self._buffered >= self.buffer_rows:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows, sorted; runs of consecutive indices go out in one call."""
        if not self._buffered:
            return
        index, rows = np.concatenate(self._index), np.concatenate(self._rows)
        self._index, self._rows, self._buffered = [], [], 0
        order = np.argsort(index, kind="stable")
        index, rows = index[order], np.ascontiguousarray(rows[order])
        breaks = np.flatnonzero(np.diff(index) != 1) + 1
        for lo, hi in zip(np.r_[0, breaks], np.r_[breaks, index.size]):
            self._pwrite(rows[lo:hi].tobytes(), int(index[lo]) * self.row_bytes)

    def _pwrite(self, data: bytes, offset: int) -> None:
        view = memoryview(data)
        while view:  # pwrite may write less than asked
            done = os.pwrite(self._fd, view, offset)
            view, offset = view[done:], offset + done

    def sync(self) -> None:
        self.flush()
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            self.flush()
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1
