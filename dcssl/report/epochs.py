"""The report's reads of epoch artefacts (labels, stats, feature bank), each behind one function
so a change of the on-disk layout is a change here only."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["clustered_epochs", "read_labels", "read_stats", "open_features"]


def _labels_dir(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / "labels" / f"epoch-{epoch:04d}"


def clustered_epochs(run_dir: Path) -> list[int]:
    """Epochs whose labels are complete, oldest first."""
    root = Path(run_dir) / "labels"
    if not root.is_dir():
        return []
    return sorted(int(p.parent.name.split("-")[1]) for p in root.glob("epoch-*/COMPLETE"))


def read_labels(run_dir: Path, epoch: int, n: int) -> np.ndarray | None:
    """int32 labels of a complete epoch by global index (-1: unassigned), or None."""
    folder = _labels_dir(run_dir, epoch)
    path = folder / "labels.i32"
    if epoch < 0 or not (folder / "COMPLETE").is_file() or path.stat().st_size != 4 * n:
        return None
    return np.fromfile(path, dtype="<i4")


def read_stats(run_dir: Path, epoch: int) -> dict:
    path = _labels_dir(run_dir, epoch) / "stats.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def open_features(run_dir: Path, epoch: int) -> np.ndarray | None:
    """The epoch's feature bank (read-only n×d float16 memmap), or None when pruned/unfinished."""
    folder = Path(run_dir) / "features" / f"epoch-{epoch:04d}"
    if not (folder / "COMPLETE").is_file():
        return None
    meta = json.loads((folder / "meta.json").read_text())
    shape = (int(meta["n"]), int(meta["dim"]))
    return np.memmap(folder / "embeddings.f16", dtype=np.float16, mode="r", shape=shape)
