"""Initial centroids: k random rows, greedy k-means++ on a sample, or k-means|| (Bahmani et al.
2012) over a sample distributed over the ranks.

Every method draws from seeded global sample indices and decides with rank-count-independent
quantities (exact nearest centroids, float64 distances of one formula, fixed-point totals, work
on one rank with one BLAS thread), so the same seed gives the same centroids for any rank count.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .exact import as_comm, broadcast, gather_rows, global_count
from .parallel_init import kmeans_parallel
from .sampling import Refiner, kmeanspp_sample, needs_refiner, sample_index

__all__ = ["init_centroids", "auto_method"]

# init=auto: greedy k-means++ while its estimated cost on rank 0 stays within this many flop
# (≈ 30 s at the 19 GFLOP/s its one-pick-at-a-time products ran at here, load 2; ≈ 60 s at the
# 10 GFLOP/s of a loaded machine; at d = 256 and the default sample and restarts that is
# k ≤ 1,100, at d = 64 k ≤ 2,200), k-means|| beyond: where both run, k-means++ ends lower
# (init-quality bench), so it is kept for as long as it is affordable.
AUTO_KMEANSPP_FLOP = 6e11


def auto_method(n: int, k: int, d: int, sample: int = 0, trials: int = 5) -> str:
    """What ``init=auto`` runs: kmeans++ while its estimated flop fit ``AUTO_KMEANSPP_FLOP``."""
    m = kmeanspp_sample(n, k, sample)
    flop = 2.0 * max(trials, 1) * k * (2 + int(np.log(k))) * m * d
    return "kmeans++" if flop <= AUTO_KMEANSPP_FLOP else "kmeans||"


def _kmeanspp(sample: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Greedy k-means++ (Arthur & Vassilvitskii; 2+log k trials per pick, as scikit-learn)."""
    rng = np.random.default_rng([seed, 2])
    x = sample.astype(np.float32)
    xx = np.einsum("ij,ij->i", x, x)
    trials = 2 + int(np.log(k))
    centers = np.empty((k, x.shape[1]), dtype=np.float32)
    first = int(rng.integers(len(x)))
    centers[0] = x[first]
    closest = np.maximum(xx - 2 * x @ x[first] + xx[first], 0)
    for i in range(1, k):
        cum = np.cumsum(closest, dtype=np.float64)
        if cum[-1] <= 0:  # fewer distinct points than k: take any (duplicates split later)
            pick = rng.integers(len(x), size=trials)
        else:
            pick = np.searchsorted(cum, rng.random(trials) * cum[-1], side="right")
            pick = np.minimum(pick, len(x) - 1)
        d_new = np.maximum(xx[None, :] - 2 * x[pick] @ x.T + xx[pick][:, None], 0)
        cand = np.minimum(closest[None, :], d_new)
        best = int(np.argmin(cand.sum(axis=1, dtype=np.float64)))
        closest = cand[best]
        centers[i] = x[pick[best]]
    return centers


def init_centroids(
    x_local: np.ndarray,
    k: int,
    comm=None,
    *,
    method: str = "auto",
    sample: int = 0,
    seed: int = 0,
    row0: int = 0,
    trials: int = 5,
    refine: int = 20,
    resume: dict | None = None,
    on_round: Callable[[dict], None] | None = None,
    refiner: Refiner | None = None,
) -> np.ndarray:
    """k initial centroids chosen on rank 0 from a global sample and broadcast.

    ``random``: k distinct rows. ``kmeans++``: ``trials`` runs of greedy k-means++ on ``sample``
    rows (0: max(20 k, 10 000)), each refined by ``refine`` Lloyd iterations on the sample; the
    lowest sample inertia wins (cheap insurance against a poor local optimum). ``kmeans||``: see
    ``kmeans_parallel`` (``resume``/``on_round`` checkpoint its rounds). ``auto``: kmeans++ while
    its estimated cost is affordable (``auto_method``), kmeans|| beyond. ``row0`` is this rank's
    first global row.
    """
    comm = as_comm(comm)
    n = global_count(len(x_local), comm)
    if k > n:
        raise ValueError(f"k={k} exceeds the number of rows ({n}); lower k")
    if method == "auto":
        method = auto_method(n, k, x_local.shape[1], sample, trials)
    if method == "kmeans||":
        return kmeans_parallel(
            x_local,
            k,
            comm,
            sample=sample,
            seed=seed,
            row0=row0,
            refine=refine,
            resume=resume,
            on_round=on_round,
            refiner=refiner,
            restarts=trials,
        )
    m = k if method == "random" else kmeanspp_sample(n, k, sample)
    index = sample_index(n, m, seed, 1)
    rows = gather_rows(np.asarray(x_local, dtype=np.float32), row0, row0 + len(x_local), index, comm)
    out = np.zeros((k, x_local.shape[1]), dtype=np.float32)
    if comm.Get_rank() == 0:
        if method == "random":
            out[:] = rows[np.random.default_rng([seed, 3]).permutation(k)]
        elif method == "kmeans++":
            out[:] = _best_of(rows, k, seed, trials, refine, needs_refiner(refiner))
        else:
            raise ValueError(f"init {method!r}: choose auto, kmeans++, kmeans|| or random")
    return broadcast(out, comm)


def _best_of(rows: np.ndarray, k: int, seed: int, trials: int, refine: int, refiner: Refiner) -> np.ndarray:
    best, best_inertia = None, np.inf
    for trial in range(max(trials, 1)):
        cent, inertia = refiner(rows, _kmeanspp(rows, k, seed * 1000 + trial), None, refine)
        if inertia < best_inertia:
            best, best_inertia = cent, inertia
    return best
