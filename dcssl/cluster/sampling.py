"""The sampling every seeding method shares: seeded global row indices, the k-means++ sample size,
and the Lloyd refiner seeding is handed (so that seeding, which k-means starts from, never imports
k-means)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["Refiner", "kmeanspp_sample", "needs_refiner", "sample_index"]

# Lloyd from given centroids on init sample rows → (centroids, inertia): ``kmeans.refine_on_sample``,
# passed in by the caller so that seeding (which k-means starts from) never imports k-means.
Refiner = Callable[[np.ndarray, np.ndarray, object, int], tuple[np.ndarray, float]]


def kmeanspp_sample(n: int, k: int, sample: int) -> int:
    """Rows of k-means++'s sample: ``sample``, else max(20 k, 10 000); at most ``n``."""
    return min(n, sample or max(20 * k, 10_000))


def needs_refiner(refiner: Refiner | None) -> Refiner:
    """``refiner``, or a ValueError naming the one to pass (refining needs Lloyd from k-means)."""
    if refiner is None:
        raise ValueError("refining seeds needs refiner=dcssl.cluster.kmeans.refine_on_sample")
    return refiner


def sample_index(n: int, m: int, seed: int, stream: int) -> np.ndarray:
    """m distinct global row indices, sorted, the same on every rank and for every rank count."""
    rng = np.random.default_rng([seed, stream])
    return np.sort(rng.choice(n, size=min(m, n), replace=False))
