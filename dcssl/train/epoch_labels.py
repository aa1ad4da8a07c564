"""The pseudo-labels a training segment trains on: the cluster job's labels of the epoch before,
exclusions applied, checked to be usable."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dcssl.cluster.health import single_label_reason
from dcssl.epochs.labels import (
    LabelFilesError,
    head_count,
    labels_dir,
    labels_file,
    read_stats,
    sealed_head_labels,
    sealed_labels,
)
from dcssl.exclusion import mask_labels
from dcssl.train.segment_errors import SegmentError

__all__ = ["load_labels", "load_extra_heads", "labels_reused"]


def load_labels(run_dir: str | Path, epoch: int, n_tiles: int) -> tuple[np.ndarray, int]:
    """(labels int32 by global index, k) written by the cluster job for ``epoch``."""
    try:
        raw = sealed_labels(run_dir, epoch, n_tiles)
    except LabelFilesError as err:
        raise SegmentError(str(err)) from None
    labels, stats, path = mask_labels(run_dir, raw), read_stats(run_dir, epoch), labels_file(run_dir, epoch)
    k = int(stats["k"])
    if labels.max() >= k or labels.min() < -1:
        raise SegmentError(
            f"{path}: labels outside [-1, {k}) (stats.json k={k}); re-run the cluster job for epoch {epoch}"
        )
    if labels.max() < 0:
        raise SegmentError(
            f"{path}: every tile is unassigned (-1) or excluded; re-run the cluster job or undo "
            "an exclusion (python -m dcssl.launch exclude RUN --epoch E --clusters … --undo)"
        )
    reason = single_label_reason(stats, epoch)
    if reason:
        raise SegmentError(f"{labels_dir(run_dir, epoch)}: {reason}")
    return labels, k


def load_extra_heads(run_dir: str | Path, epoch: int, n_tiles: int) -> list[tuple[np.ndarray, int]]:
    """(labels, k) of each extra head of ``epoch``'s clustering (``cluster.extra_k``), exclusions
    applied; [] for a one-head run."""
    heads = []
    for head in range(1, head_count(run_dir, epoch) + 1):
        try:
            raw, k = sealed_head_labels(run_dir, epoch, n_tiles, head)
        except LabelFilesError as err:
            raise SegmentError(str(err)) from None
        labels = mask_labels(run_dir, raw)
        if labels.max() >= k or labels.min() < -1:
            raise SegmentError(
                f"{labels_dir(run_dir, epoch)}: head {head}'s labels lie outside [-1, {k}); "
                f"re-run the cluster job for epoch {epoch}"
            )
        heads.append((labels, k))
    return heads


def labels_reused(run_dir: str | Path, epoch: int) -> bool:
    """True when ``epoch``'s labels are a copy of the epoch before (``loop.recluster_every``)."""
    return epoch >= 0 and read_stats(run_dir, epoch).get("reused_from") is not None
