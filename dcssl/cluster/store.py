"""The cluster job's files: feature bank input, labels output, numpy checkpoints.

Layout (see DESIGN.md):
  features/epoch-EEEE/{embeddings.f16, meta.json, COMPLETE}   N×d float16 by global index
  labels/epoch-EEEE/{labels.i32, centroids.npy, stats.json, COMPLETE}
  checkpoints/cluster/epoch-EEEE/iter-*.pt                    npz payloads, newest valid wins
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hpc.checkpoint import CheckpointManager, atomic_path, atomic_write_text
from hpc.integrity import seal

LABEL_FILES = ("labels.i32", "centroids.npy", "stats.json")
"""What an epoch's labels COMPLETE marker records the SHA-256 of."""

__all__ = ["FeatureBank", "open_features", "labels_dir", "checkpoints", "LabelsWriter", "read_labels_range"]


def features_dir(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / "features" / f"epoch-{epoch:04d}"


def labels_dir(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / "labels" / f"epoch-{epoch:04d}"


@dataclass(frozen=True)
class FeatureBank:
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


def open_features(run_dir: Path, epoch: int) -> FeatureBank:
    """Validate epoch ``epoch``'s feature bank; ValueError with the fix otherwise."""
    folder = features_dir(run_dir, epoch)
    if not (folder / "COMPLETE").is_file():
        raise ValueError(
            f"{folder}: no COMPLETE marker — the features of epoch {epoch} are missing "
            "or unfinished; run (or finish) that epoch's training segment first"
        )
    try:
        meta = json.loads((folder / "meta.json").read_text())
        n, dim, dtype = int(meta["n"]), int(meta["dim"]), meta.get("dtype", "float16")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{folder / 'meta.json'}: unreadable ({err}); it must hold "
            '{"n": N, "dim": D, "dtype": "float16"} — re-extract the features'
        ) from None
    if dtype != "float16":
        raise ValueError(
            f"{folder / 'meta.json'}: dtype {dtype!r} is not supported; the feature bank must be float16"
        )
    path = folder / "embeddings.f16"
    size = path.stat().st_size if path.is_file() else -1
    if size != n * dim * 2:
        raise ValueError(
            f"{path}: {size} bytes, expected n×dim×2 = {n * dim * 2} "
            "(truncated or wrong meta.json) — re-extract the features"
        )
    if n < 2:
        raise ValueError(f"{path}: only {n} rows; clustering needs at least 2")
    return FeatureBank(path, n, dim)


def _save_npz(state: dict, path: Path) -> None:
    arrays = {k: np.asarray(v) for k, v in state.items() if k != "meta"}
    arrays["meta"] = np.frombuffer(json.dumps(state.get("meta", {})).encode(), dtype=np.uint8)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def _load_npz(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        state = {k: data[k] for k in data.files if k != "meta"}
        state["meta"] = json.loads(data["meta"].tobytes().decode())
    return state


def checkpoints(run_dir: Path, epoch: int, keep: int) -> CheckpointManager:
    folder = Path(run_dir) / "checkpoints" / "cluster" / f"epoch-{epoch:04d}"
    return CheckpointManager(folder, prefix="iter", keep=keep, save_fn=_save_npz, load_fn=_load_npz)


def read_labels_range(run_dir: Path, epoch: int, n: int, start: int, stop: int) -> np.ndarray | None:
    """Rows [start, stop) of a finished epoch's labels, or None if that epoch has none."""
    folder = labels_dir(run_dir, epoch)
    path = folder / "labels.i32"
    if epoch < 0 or not (folder / "COMPLETE").is_file() or path.stat().st_size != n * 4:
        return None
    if stop <= start:
        return np.zeros(0, dtype=np.int32)
    return np.array(np.memmap(path, dtype="<i4", mode="r", offset=start * 4, shape=(stop - start,)))


class LabelsWriter:
    """Write labels by global index from many ranks into one file, published all at once.

    Files go to a hidden sibling ``.epoch-EEEE.partial`` first; rank 0 renames it to the final
    folder and writes COMPLETE last, so readers see a whole epoch or none.
    """

    def __init__(self, run_dir: Path, epoch: int, n: int, comm):
        self.final = labels_dir(run_dir, epoch)
        self.tmp = self.final.parent / f".{self.final.name}.partial"
        self.n, self.comm = n, comm

    def begin(self) -> None:
        if self.comm.Get_rank() == 0:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp.mkdir(parents=True)
            with open(self.tmp / "labels.i32", "wb") as handle:
                handle.truncate(self.n * 4)
        self.comm.Barrier()

    def write_rows(self, start: int, labels: np.ndarray) -> None:
        with open(self.tmp / "labels.i32", "r+b") as handle:
            handle.seek(start * 4)
            handle.write(np.ascontiguousarray(labels, dtype="<i4").tobytes())
            handle.flush()
            os.fsync(handle.fileno())
        self.comm.Barrier()

    def publish(self, centroids: np.ndarray, stats: dict) -> None:
        """Rank 0: centroids + stats, rename into place, then COMPLETE; everyone waits for it."""
        if self.comm.Get_rank() == 0:
            with atomic_path(self.tmp / "centroids.npy") as tmp:
                with open(tmp, "wb") as handle:
                    np.save(handle, centroids)
            atomic_write_text(self.tmp / "stats.json", json.dumps(stats, indent=1))
            if self.final.exists():  # a crash between rename and COMPLETE left it incomplete
                shutil.rmtree(self.final)
            os.replace(self.tmp, self.final)
            seal(self.final, LABEL_FILES, n=self.n)
        self.comm.Barrier()
