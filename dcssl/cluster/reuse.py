"""The clustering cadence (``loop.recluster_every``): which epochs cluster, and what an epoch
that does not cluster publishes instead — the previous epoch's labels, sealed under its own
number, so every reader (training, NMI, report, status, the loop's done-checks) sees one labels
folder per epoch as always."""

from __future__ import annotations

import logging
from pathlib import Path

from dcssl.epochs.labels import is_complete, read_stats, reuse_labels
from dcssl.jsonl import append_jsonl
from dcssl.paths import RunPaths

__all__ = ["reclusters", "reuse_previous"]

log = logging.getLogger(__name__)


def reclusters(epoch: int, every: int) -> bool:
    """True when epoch ``epoch`` runs k-means (epoch 0, the bootstrap's, always does)."""
    return epoch % every == 0


def reuse_previous(run_dir: Path, epoch: int, comm) -> dict:
    """Rank 0 copies epoch-1's labels to ``epoch`` (a no-op when they are complete already);
    returns the stats. Every rank returns once the copy is sealed."""
    if comm.Get_rank() == 0 and not is_complete(run_dir, epoch):
        reuse_labels(run_dir, epoch, epoch - 1)
        stats = read_stats(run_dir, epoch)
        append_jsonl(
            RunPaths(Path(run_dir)).metrics,
            {
                "kind": "cluster",
                "epoch": epoch,
                "k": stats["k"],
                "reused_from": epoch - 1,
                "nmi_prev": None,
                **{key: stats.get(key) for key in ("clusters_used", "largest_share", "warnings")},
                "seconds": {"total": 0.0},
            },
        )
        log.info(
            "epoch %d: no clustering (loop.recluster_every): labels of epoch %d reused", epoch, epoch - 1
        )
    comm.Barrier()
    return read_stats(run_dir, epoch)
