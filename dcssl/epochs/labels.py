"""An epoch's cluster assignment: its one writer and its readers.

    RUN_DIR/labels/epoch-NNNN/labels.i32      int32 little-endian by global tile index (-1: none)
                              centroids.npy   k×d float32 (zeros when written by a test fixture)
                              stats.json      {"k", "n", "sizes", "epoch", …} (the cluster job's stats)
                              COMPLETE        written last: {"n", "sha256": {file: digest}}

The cluster job writes it (from every rank), test fixtures and benchmarks write it in the same
format (``write_labels``); train, curate, exclude, report, the pipeline and verify read it here.
Files are written into a hidden sibling ``.epoch-NNNN.partial``, renamed into place whole and
sealed last, so a reader sees a complete epoch or none.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from dcssl.epochs.features import is_complete as features_complete
from dcssl.paths import RunPaths, epochs_in
from hpc.checkpoint import atomic_path, atomic_write_text
from hpc.config import read_text_file
from hpc.integrity import DamagedFile, check_sealed, seal

__all__ = [
    "LABEL_FILES",
    "LabelFilesError",
    "labels_dir",
    "labels_file",
    "is_complete",
    "complete_epochs",
    "newest_with_features",
    "verify",
    "read_labels",
    "read_labels_range",
    "sealed_labels",
    "read_stats",
    "read_centroids",
    "LabelsWriter",
    "write_labels",
]

LABELS, CENTROIDS, STATS = "labels.i32", "centroids.npy", "stats.json"
LABEL_FILES = (LABELS, CENTROIDS, STATS)
"""What an epoch's labels COMPLETE marker records the SHA-256 of."""


class LabelFilesError(ValueError):
    """An epoch's labels are missing, unfinished, of the wrong size or damaged; says the fix."""


def labels_dir(run_dir: str | os.PathLike, epoch: int) -> Path:
    return RunPaths(Path(run_dir)).labels(epoch)


def labels_file(run_dir: str | os.PathLike, epoch: int) -> Path:
    return labels_dir(run_dir, epoch) / LABELS


def is_complete(run_dir: str | os.PathLike, epoch: int) -> bool:
    return RunPaths(Path(run_dir)).labels_complete(epoch)


def complete_epochs(run_dir: str | os.PathLike) -> list[int]:
    """Epochs whose labels are complete, oldest first."""
    return [e for e in epochs_in(RunPaths(Path(run_dir)).labels_root) if is_complete(run_dir, e)]


def newest_with_features(run_dir: str | os.PathLike) -> int | None:
    """The newest epoch with complete labels whose feature bank still exists (old ones are pruned)."""
    usable = [e for e in complete_epochs(run_dir) if features_complete(run_dir, e)]
    return usable[-1] if usable else None


def verify(run_dir: str | os.PathLike, epoch: int) -> dict:
    """The labels' COMPLETE document after checking every file's SHA-256; DamagedFile otherwise."""
    return check_sealed(labels_dir(run_dir, epoch))


def read_labels(run_dir: str | os.PathLike, epoch: int, n: int | None = None) -> np.ndarray | None:
    """int32 labels of a complete epoch by global index (-1: unassigned), or None when the epoch
    has none (or, given ``n``, holds another number of labels)."""
    path = labels_file(run_dir, epoch)
    if epoch < 0 or not is_complete(run_dir, epoch):
        return None
    if n is not None and path.stat().st_size != 4 * n:
        return None
    return np.fromfile(path, dtype="<i4")


def read_labels_range(
    run_dir: str | os.PathLike, epoch: int, n: int, start: int, stop: int
) -> np.ndarray | None:
    """Rows [start, stop) of a finished epoch's labels, or None if that epoch has none."""
    path = labels_file(run_dir, epoch)
    if epoch < 0 or not is_complete(run_dir, epoch) or path.stat().st_size != n * 4:
        return None
    if stop <= start:
        return np.zeros(0, dtype=np.int32)
    return np.array(np.memmap(path, dtype="<i4", mode="r", offset=start * 4, shape=(stop - start,)))


def sealed_labels(run_dir: str | os.PathLike, epoch: int, n: int) -> np.ndarray:
    """The labels to train on: complete, one per tile and matching their checksums, else
    LabelFilesError naming the file and the fix (re-run that epoch's clustering)."""
    folder, path = labels_dir(run_dir, epoch), labels_file(run_dir, epoch)
    if not is_complete(run_dir, epoch):
        raise LabelFilesError(
            f"{folder}: pseudo-labels of epoch {epoch} are not complete; run the cluster job for epoch {epoch} first"
        )
    size = path.stat().st_size if path.is_file() else -1
    if size != 4 * n:
        raise LabelFilesError(
            f"{path}: holds {size // 4} labels, the store has {n} tiles; "
            f"re-run the cluster job for epoch {epoch} on this store"
        )
    try:
        verify(run_dir, epoch)
    except DamagedFile as err:
        raise LabelFilesError(
            f"{err}; re-run the cluster job for epoch {epoch} "
            f"(python -m dcssl.launch cluster {run_dir} --epoch {epoch} --redo)"
        ) from None
    return np.array(np.memmap(path, dtype=np.int32, mode="r"))


def read_stats(run_dir: str | os.PathLike, epoch: int) -> dict:
    """The epoch's stats.json ({} when it has none); a garbled one is a one-line ConfigError."""
    path = labels_dir(run_dir, epoch) / STATS
    return json.loads(read_text_file(path)) if path.is_file() else {}


def read_centroids(run_dir: str | os.PathLike, epoch: int) -> np.ndarray:
    return np.load(labels_dir(run_dir, epoch) / CENTROIDS, allow_pickle=False)


def _rank(comm) -> int:
    return 0 if comm is None else comm.Get_rank()


def _barrier(comm) -> None:
    if comm is not None:
        comm.Barrier()


class LabelsWriter:
    """Write labels by global index from many ranks into one file, published all at once.

    Files go to a hidden sibling ``.epoch-EEEE.partial`` first; rank 0 renames it to the final
    folder and writes COMPLETE last, so readers see a whole epoch or none. ``comm`` None: one
    process, no MPI.
    """

    def __init__(self, run_dir: str | os.PathLike, epoch: int, n: int, comm=None):
        self.final = labels_dir(run_dir, epoch)
        self.tmp = self.final.parent / f".{self.final.name}.partial"
        self.n, self.comm = n, comm

    def begin(self) -> None:
        if _rank(self.comm) == 0:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp.mkdir(parents=True)
            with open(self.tmp / LABELS, "wb") as handle:
                handle.truncate(self.n * 4)
        _barrier(self.comm)

    def write_rows(self, start: int, labels: np.ndarray) -> None:
        with open(self.tmp / LABELS, "r+b") as handle:
            handle.seek(start * 4)
            handle.write(np.ascontiguousarray(labels, dtype="<i4").tobytes())
            handle.flush()
            os.fsync(handle.fileno())
        _barrier(self.comm)

    def publish(self, centroids: np.ndarray, stats: dict) -> None:
        """Rank 0: centroids + stats, rename into place, then COMPLETE; everyone waits for it."""
        if _rank(self.comm) == 0:
            with atomic_path(self.tmp / CENTROIDS) as tmp:
                with open(tmp, "wb") as handle:
                    np.save(handle, centroids)
            atomic_write_text(self.tmp / STATS, json.dumps(stats, indent=1))
            if self.final.exists():  # a crash between rename and COMPLETE left it incomplete
                shutil.rmtree(self.final)
            os.replace(self.tmp, self.final)
            seal(self.final, LABEL_FILES, n=self.n)
        _barrier(self.comm)


def write_labels(
    run_dir: str | os.PathLike, epoch: int, labels: np.ndarray, centroids: np.ndarray, stats: dict
) -> Path:
    """A complete labels folder from one process, in the cluster job's format (fixtures, benches)."""
    labels = np.asarray(labels, dtype=np.int32)
    writer = LabelsWriter(run_dir, epoch, int(labels.size))
    writer.begin()
    writer.write_rows(0, labels)
    writer.publish(centroids, stats)
    return writer.final
