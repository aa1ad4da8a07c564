"""A train segment's done marker: ``RUN_DIR/train/epoch-NNNN.done.json`` holds the segment's
summary, written (atomically) last; it outlives the epoch's feature bank, which is pruned."""

from __future__ import annotations

import json
import os
from pathlib import Path

from dcssl.paths import RunPaths, epochs_in
from hpc.checkpoint import atomic_write_text

__all__ = ["done_path", "finished_epochs", "read_done", "write_done"]


def done_path(run_dir: str | os.PathLike, epoch: int) -> Path:
    return RunPaths(Path(run_dir)).train_done(epoch)


def finished_epochs(run_dir: str | os.PathLike) -> list[int]:
    """Epochs whose train segment wrote its done marker, oldest first."""
    return epochs_in(RunPaths(Path(run_dir)).train_markers, ".done.json")


def read_done(run_dir: str | os.PathLike, epoch: int) -> dict | None:
    """The finished segment's summary, or None when it has not finished."""
    path = done_path(run_dir, epoch)
    return json.loads(path.read_text()) if path.is_file() else None


def write_done(run_dir: str | os.PathLike, epoch: int, summary: dict) -> Path:
    path = done_path(run_dir, epoch)
    atomic_write_text(path, json.dumps(summary, indent=1))
    return path
