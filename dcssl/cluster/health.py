"""Is a clustering usable as pseudo-labels? Loud checks that hold for any clusterer.

One cluster teaches the network nothing (the loss is 0 from the first step); one cluster holding
most tiles, or nearly as many clusters as tiles, gives labels a classifier can only memorise —
and NMI(t-1, t) can still look stable. These are warnings in the log, the stats, the metrics and
the status table; training on a single label is refused outright.
"""

from __future__ import annotations

__all__ = ["label_warnings", "single_label_reason", "FIX_HINT"]

FIX_HINT = (
    "settings to change: cluster.method=kmeans with cluster.k=…, or for RCC "
    "cluster.pca_dim (0: all features), cluster.rcc.dim, cluster.rcc.knn, cluster.rcc.min_size"
)


def label_warnings(sizes: list[int], n: int, max_share: float, max_clusters: float) -> list[str]:
    """Warnings for cluster ``sizes`` over ``n`` points (empty: the labels look usable)."""
    used = [s for s in sizes if s > 0]
    out = []
    if len(used) <= 1:
        out.append("single cluster: every point has the same label")
    elif max(used) > max_share * n:
        out.append(f"largest cluster holds {max(used) / n:.1%} of the points (> {max_share:.0%})")
    if n > 1 and len(used) >= max_clusters * n:
        out.append(f"{len(used)} clusters for {n} points (≥ {max_clusters:.0%} of N): near-singletons")
    return out


def single_label_reason(stats: dict, epoch: int) -> str | None:
    """Why a train segment must not use epoch's labels (None: it may)."""
    used = stats.get("clusters_used", stats.get("k"))
    if used is None or used > 1:
        return None
    return (
        f"labels of epoch {epoch} ({stats.get('method', 'kmeans')}) hold a single cluster: training on "
        f"one label learns nothing; re-cluster with `launch cluster RUN --epoch {epoch} --redo …` — "
        + FIX_HINT
    )
