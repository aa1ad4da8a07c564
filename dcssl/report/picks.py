"""Which tiles each cluster shows: the ``curate`` rule, computed in two streaming passes.

Distance = cosine distance of a tile's L2-normalised feature to its cluster's mean direction (as
in ``dcssl.evaluate.curate``); a cluster shows its nearest tile, then tiles drawn from
equal-frequency distance bins (``curate.sample_cluster``), nearest first. Memory: the labels, one
float per tile and k×d centres; the bank is read in chunks.
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from dcssl.evaluate.curate import sample_cluster

__all__ = ["cluster_distances", "cluster_picks", "by_cluster"]

_CHUNK = 1 << 16


def _unit(rows: np.ndarray) -> np.ndarray:
    x = np.asarray(rows, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _one_hot(labels: np.ndarray, k: int) -> sparse.csr_matrix:
    ok = np.flatnonzero(labels >= 0)
    return sparse.csr_matrix((np.ones(ok.size, np.float32), (labels[ok], ok)), shape=(k, labels.size))


def cluster_distances(labels: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Cosine distance of every tile to its cluster's mean direction (NaN where unassigned)."""
    k = int(labels.max()) + 1
    sums = np.zeros((k, features.shape[1]), dtype=np.float64)
    for lo in range(0, len(labels), _CHUNK):
        hi = min(lo + _CHUNK, len(labels))
        sums += _one_hot(labels[lo:hi], k) @ _unit(features[lo:hi])
    centres = _unit(sums)
    out = np.full(len(labels), np.nan, dtype=np.float32)
    for lo in range(0, len(labels), _CHUNK):
        hi = min(lo + _CHUNK, len(labels))
        lab = labels[lo:hi]
        ok = lab >= 0
        x = _unit(features[lo:hi][ok])
        out[lo:hi][ok] = 1.0 - np.einsum("ij,ij->i", x, centres[lab[ok]])
    return out


def by_cluster(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Member indices (ascending) of every non-empty cluster."""
    order = np.argsort(labels, kind="stable")
    order = order[labels[order] >= 0]
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    return {int(labels[m[0]]): m for m in np.split(order, bounds) if len(m)}


def cluster_picks(
    members: np.ndarray, distances: np.ndarray, n: int, bins: int, seed: int, cluster: int
) -> np.ndarray:
    """Up to ``n`` global indices of one cluster, nearest first, the nearest tile always in."""
    d = distances[members]
    rng = np.random.default_rng([seed, cluster])
    pos, _ = sample_cluster(d, n, bins, rng)
    pos = pos[np.argsort(d[pos], kind="stable")]
    nearest = int(np.argmin(d))
    if nearest not in pos:
        pos[0] = nearest  # pos[0] is in the nearest bin, so the bins keep their quotas
    return members[pos]
