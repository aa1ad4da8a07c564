"""Tiles a person dropped from training (artefact clusters): one bit per global tile index.

    RUN_DIR/excluded.npy   uint8, np.packbits of the N-tile boolean mask (written atomically)

``launch exclude RUN --epoch E --clusters 3,17`` sets the bits of every tile that epoch E put in
those clusters (``--undo`` clears them: the next clustering labels them again and the segment
after it draws them), and appends an ``exclude`` record to metrics.jsonl with
who and when. Every later train segment reads its labels through ``mask_labels``: an excluded
tile is unassigned (-1), so the sampler never draws it; the cluster job fits on the other tiles
only and labels excluded ones -1. Tiles are kept by index, not by cluster, so the mask means
the same thing after the clusters are renumbered by the next clustering.
"""

from __future__ import annotations

import getpass
import io
import socket
import time
from pathlib import Path

import numpy as np

from dcssl.jsonl import append_jsonl
from dcssl.paths import RunPaths
from hpc.checkpoint import atomic_path

__all__ = ["mask_path", "read_mask", "write_mask", "mask_labels", "update_exclusion"]


def mask_path(run_dir: str | Path) -> Path:
    return RunPaths(Path(run_dir)).excluded


def read_mask(run_dir: str | Path, n: int) -> np.ndarray | None:
    """The excluded-tile mask (bool, n) or None when nothing was ever excluded."""
    path = mask_path(run_dir)
    if not path.is_file():
        return None
    packed = np.load(path, allow_pickle=False)
    if packed.size != (n + 7) // 8:
        raise ValueError(
            f"{path}: a mask for {packed.size * 8} tiles, the store has {n}; it belongs to another "
            "store — delete it and exclude again"
        )
    return np.unpackbits(packed, count=n).astype(bool)


def write_mask(run_dir: str | Path, mask: np.ndarray) -> Path:
    path = mask_path(run_dir)
    buffer = io.BytesIO()
    np.save(buffer, np.packbits(np.asarray(mask, dtype=bool)))
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(buffer.getvalue())
    return path


def mask_labels(run_dir: str | Path, labels: np.ndarray) -> np.ndarray:
    """``labels`` with every excluded tile set to -1 (a copy; unchanged when nothing is excluded)."""
    mask = read_mask(run_dir, len(labels))
    if mask is None or not mask.any():
        return labels
    out = np.array(labels, copy=True)
    out[mask] = -1
    return out


def update_exclusion(
    run_dir: str | Path, epoch: int, labels: np.ndarray, clusters: list[int], undo: bool = False
) -> dict:
    """Set (or clear) the bits of the tiles ``labels`` (epoch ``epoch``) puts in ``clusters``;
    returns the ``exclude`` record it appended to metrics.jsonl."""
    mask = read_mask(run_dir, len(labels))
    mask = np.zeros(len(labels), dtype=bool) if mask is None else mask
    chosen = np.isin(labels, np.asarray(clusters, dtype=labels.dtype))
    before = int(mask.sum())
    mask = mask & ~chosen if undo else mask | chosen
    write_mask(run_dir, mask)
    record = {
        "kind": "exclude",
        "epoch": epoch,
        "clusters": sorted(int(c) for c in clusters),
        "undo": undo,
        "tiles": int(chosen.sum()),
        "excluded_before": before,
        "excluded_total": int(mask.sum()),
        "user": getpass.getuser(),
        "host": socket.gethostname(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    append_jsonl(RunPaths(Path(run_dir)).metrics, record)
    return record
