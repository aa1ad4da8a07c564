"""An epoch's cluster assignment: its one writer and its readers.

    RUN_DIR/labels/epoch-NNNN/labels.i32      int32 little-endian by global tile index (-1: none)
                              centroids.npy   k×d float32 (zeros when written by a test fixture)
                              labels-hH.i32   extra head H ≥ 1 (``cluster.extra_k``), same format
                              centroids-hH.npy
                              stats.json      {"k", "n", "sizes", "epoch", …} (the cluster job's stats;
                                              "heads": one {"k", "sizes", …} per extra head;
                                              "reused_from": E when ``loop.recluster_every`` copied
                                              epoch E's labels instead of clustering)
                              COMPLETE        written last: {"n", "sha256": {file: digest}}

Head 0 (``labels.i32``) is the primary: the sampler, NMI, the report and every other reader use
it; only training reads the extra heads. A run without extra heads writes exactly the files above
it always did.

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
    "head_count",
    "sealed_head_labels",
    "LabelsWriter",
    "write_labels",
    "reuse_labels",
]

LABELS, CENTROIDS, STATS = "labels.i32", "centroids.npy", "stats.json"
LABEL_FILES = (LABELS, CENTROIDS, STATS)
"""What an epoch's labels COMPLETE marker records the SHA-256 of (plus each extra head's pair)."""


def _head_files(head: int) -> tuple[str, str]:
    """(labels, centroids) file names of head ``head`` (0: the primary)."""
    if head == 0:
        return LABELS, CENTROIDS
    return f"labels-h{head}.i32", f"centroids-h{head}.npy"


def _sealed_files(heads: int) -> tuple[str, ...]:
    extra = [name for head in range(1, heads + 1) for name in _head_files(head)]
    return (*LABEL_FILES, *extra)


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


def head_count(run_dir: str | os.PathLike, epoch: int) -> int:
    """How many extra heads (beyond the primary) the epoch's labels hold."""
    return len(read_stats(run_dir, epoch).get("heads") or [])


def sealed_head_labels(run_dir: str | os.PathLike, epoch: int, n: int, head: int) -> tuple[np.ndarray, int]:
    """(labels, k) of extra head ``head`` ≥ 1, checked as ``sealed_labels`` checks the primary."""
    heads = read_stats(run_dir, epoch).get("heads") or []
    if not 1 <= head <= len(heads):
        raise LabelFilesError(
            f"{labels_dir(run_dir, epoch)}: has {len(heads)} extra heads, training wants head {head}; "
            f"re-run the cluster job for epoch {epoch} with this cluster.extra_k"
        )
    return sealed_labels(run_dir, epoch, n, head), int(heads[head - 1]["k"])


def sealed_labels(run_dir: str | os.PathLike, epoch: int, n: int, head: int = 0) -> np.ndarray:
    """The labels to train on: complete, one per tile and matching their checksums, else
    LabelFilesError naming the file and the fix (re-run that epoch's clustering)."""
    folder = labels_dir(run_dir, epoch)
    path = folder / _head_files(head)[0]
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


def read_centroids(run_dir: str | os.PathLike, epoch: int, head: int = 0) -> np.ndarray:
    return np.load(labels_dir(run_dir, epoch) / _head_files(head)[1], allow_pickle=False)


def _rank(comm) -> int:
    return 0 if comm is None else comm.Get_rank()


def _barrier(comm) -> None:
    if comm is not None:
        comm.Barrier()


class LabelsWriter:
    """Write labels by global index from many ranks into one file, published all at once.

    Files go to a hidden sibling ``.epoch-EEEE.partial`` first; rank 0 renames it to the final
    folder and writes COMPLETE last, so readers see a whole epoch or none. ``comm`` None: one
    process, no MPI. ``heads``: extra heads beyond the primary (``cluster.extra_k``).
    """

    def __init__(self, run_dir: str | os.PathLike, epoch: int, n: int, comm=None, heads: int = 0):
        self.final = labels_dir(run_dir, epoch)
        self.tmp = self.final.parent / f".{self.final.name}.partial"
        self.n, self.comm, self.heads = n, comm, heads

    def begin(self) -> None:
        if _rank(self.comm) == 0:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp.mkdir(parents=True)
            for head in range(self.heads + 1):
                with open(self.tmp / _head_files(head)[0], "wb") as handle:
                    handle.truncate(self.n * 4)
        _barrier(self.comm)

    def write_rows(self, start: int, labels: np.ndarray, head: int = 0) -> None:
        with open(self.tmp / _head_files(head)[0], "r+b") as handle:
            handle.seek(start * 4)
            handle.write(np.ascontiguousarray(labels, dtype="<i4").tobytes())
            handle.flush()
            os.fsync(handle.fileno())
        _barrier(self.comm)

    def publish(self, centroids: np.ndarray, stats: dict, head_centroids: list[np.ndarray] = ()) -> None:
        """Rank 0: centroids + stats, rename into place, then COMPLETE; everyone waits for it."""
        if len(head_centroids) != self.heads:
            raise ValueError(f"{self.heads} extra heads, {len(head_centroids)} centroid arrays")
        if _rank(self.comm) == 0:
            for head, array in enumerate([centroids, *head_centroids]):
                with atomic_path(self.tmp / _head_files(head)[1]) as tmp:
                    with open(tmp, "wb") as handle:
                        np.save(handle, array)
            atomic_write_text(self.tmp / STATS, json.dumps(stats, indent=1))
            if self.final.exists():  # a crash between rename and COMPLETE left it incomplete
                shutil.rmtree(self.final)
            os.replace(self.tmp, self.final)
            seal(self.final, _sealed_files(self.heads), n=self.n)
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


def reuse_labels(run_dir: str | os.PathLike, epoch: int, source: int) -> Path:
    """Epoch ``epoch``'s labels as a sealed copy of ``source``'s, every head's (``loop.recluster_every``:
    the epochs between two clusterings train on the last labels). Stats say ``reused_from``; the
    NMI with the previous epoch is not measured (the labels are the same)."""
    try:
        verify(run_dir, source)
    except DamagedFile as err:
        raise LabelFilesError(f"{err}; re-run the cluster job for epoch {source}") from None
    stats = read_stats(run_dir, source)
    stats.update(epoch=epoch, nmi_prev=None, reused_from=source, seconds={"total": 0.0})  # no clustering ran
    heads, folder = head_count(run_dir, source), labels_dir(run_dir, source)
    writer = LabelsWriter(run_dir, epoch, (folder / LABELS).stat().st_size // 4, heads=heads)
    writer.begin()
    for head in range(heads + 1):
        writer.write_rows(0, np.fromfile(folder / _head_files(head)[0], dtype="<i4"), head)
    writer.publish(
        read_centroids(run_dir, source),
        stats,
        [read_centroids(run_dir, source, h) for h in range(1, heads + 1)],
    )
    return writer.final
