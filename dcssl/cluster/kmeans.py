"""Sharded Lloyd k-means: BLAS-blocked assignment, exact float64 sums, deterministic empty splits.

Each rank holds its rows; centroids are replicated. Per iteration only k×d sums, k counts and the
inertia cross the network (int64 fixed point, see ``exact``), so the same seed gives bit-identical
centroids and labels for 1, 2 or R ranks. ``assign`` is also the step that labels every point
after RCC.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import scipy.sparse as sp

from .assigner import TILE, Assigner
from .exact import FixedSum, as_comm, blocks, broadcast, gather_rows, global_count, global_max

__all__ = ["assign", "assign_all", "kmeans", "KMeansState", "init_centroids", "split_empty", "sample_index"]

log = logging.getLogger(__name__)

# faiss's split factor: the two halves of a split cluster move ±1/1024 apart.
_SPLIT_EPS = 1.0 / 1024
# Centroids at most set aside as "movers" per iteration (see _Bounds.shift): each costs every row
# one distance in the next pass, so a few dozen is cheap next to k.
_MOVERS = 128
# Rows whose per-cluster sums are formed in float32 by one sparse product (then added in float64).
_GROUP = 8192


def _row_norms(x_local: np.ndarray, block: int) -> np.ndarray:
    xx = np.empty(len(x_local), dtype=np.float32)
    for lo, hi in blocks(0, len(x_local), block):
        xb = np.asarray(x_local[lo:hi], dtype=np.float32)
        xx[lo:hi] = np.einsum("ij,ij->i", xb, xb)
    return xx


def _tiles(x_local: np.ndarray, block: int, tile: int):
    """(lo, hi, float32 C-contiguous rows) for every tile of every block."""
    for b0, b1 in blocks(0, len(x_local), block):
        for t0, t1 in blocks(0, b1 - b0, tile):
            yield b0 + t0, b0 + t1, np.ascontiguousarray(x_local[b0 + t0:b0 + t1], dtype=np.float32)


def assign(x_local: np.ndarray, centroids: np.ndarray, *, block: int = 8192,
           backend: str = "numpy") -> tuple[np.ndarray, np.ndarray]:
    """Nearest centroid of every row: (labels int64, squared distances float32).

    ``backend``: numpy (OpenBLAS), torch (MKL) or cuda. Sharded use: each rank calls it on its rows.
    """
    x_local = np.asarray(x_local)
    finder = Assigner(centroids, backend, min(TILE, block))
    labels = np.empty(len(x_local), dtype=np.int64)
    dist = np.empty(len(x_local), dtype=np.float32)
    xx = _row_norms(x_local, block)
    for lo, hi, xb in _tiles(x_local, block, finder.tile):
        labels[lo:hi], dist[lo:hi] = finder(xb, xx[lo:hi])
    return labels, dist


def sample_index(n: int, m: int, seed: int, stream: int) -> np.ndarray:
    """m distinct global row indices, sorted, the same on every rank and for every rank count."""
    rng = np.random.default_rng([seed, stream])
    return np.sort(rng.choice(n, size=min(m, n), replace=False))


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


def init_centroids(x_local: np.ndarray, k: int, comm=None, *, method: str = "kmeans++",
                   sample: int = 0, seed: int = 0, row0: int = 0, trials: int = 5,
                   refine: int = 20) -> np.ndarray:
    """k initial centroids chosen on rank 0 from a global sample and broadcast.

    ``random``: k distinct rows. ``kmeans++``: ``trials`` runs of greedy k-means++ on ``sample``
    rows (0: max(20 k, 10 000)), each refined by ``refine`` Lloyd iterations on the sample; the
    lowest sample inertia wins (cheap insurance against a poor local optimum). ``row0`` is this
    rank's first global row.
    """
    comm = as_comm(comm)
    n = global_count(len(x_local), comm)
    if k > n:
        raise ValueError(f"k={k} exceeds the number of rows ({n}); lower k")
    m = k if method == "random" else min(n, sample or max(20 * k, 10_000))
    index = sample_index(n, m, seed, 1)
    rows = gather_rows(np.asarray(x_local, dtype=np.float32), row0, row0 + len(x_local), index, comm)
    out = np.zeros((k, x_local.shape[1]), dtype=np.float32)
    if comm.Get_rank() == 0:
        if method == "random":
            out[:] = rows[np.random.default_rng([seed, 3]).permutation(k)]
        elif method == "kmeans++":
            out[:] = _best_of(rows, k, seed, trials, refine)
        else:
            raise ValueError(f"init {method!r}: choose kmeans++ or random")
    return broadcast(out, comm)


def _best_of(rows: np.ndarray, k: int, seed: int, trials: int, refine: int) -> np.ndarray:
    best, best_inertia = None, np.inf
    for trial in range(max(trials, 1)):
        cent = _kmeanspp(rows, k, seed * 1000 + trial)
        if refine:
            cent, _, st = kmeans(rows, k, None, iterations=refine, tol=0.0,
                                 state=KMeansState(cent), log_every=0)
            inertia = st["inertia"]
        else:
            inertia = float(assign(rows, cent)[1].sum(dtype=np.float64))
        if inertia < best_inertia:
            best, best_inertia = cent, inertia
    return best


def split_empty(centroids: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Give each empty cluster half of the largest cluster (faiss-style ±ε split), deterministically.

    Empty clusters are handled in index order; the donor is the largest cluster (lowest index on a
    tie), its centroid moved by ±1/1024 in alternating coordinates. Returns (centroids, counts,
    number split).
    """
    centroids, counts = centroids.copy(), counts.copy()
    sign = np.where(np.arange(centroids.shape[1]) % 2 == 0, 1.0, -1.0).astype(centroids.dtype)
    split = 0
    for j in np.flatnonzero(counts == 0):
        donor = int(np.argmax(counts))
        if counts[donor] < 2:
            break  # nothing left to split: fewer distinct points than clusters
        base = centroids[donor].copy()
        centroids[j] = base * (1 + sign * _SPLIT_EPS)
        centroids[donor] = base * (1 - sign * _SPLIT_EPS)
        counts[j] = counts[donor] // 2
        counts[donor] -= counts[j]
        split += 1
    return centroids, counts, split


@dataclass
class KMeansState:
    """Everything needed to continue Lloyd iterations exactly where they stopped."""

    centroids: np.ndarray
    """Current centroids (after the last completed iteration's update), float32 k×d."""
    iteration: int = 0
    """Completed iterations."""
    inertia: list[float] = field(default_factory=list)
    """Sum of squared distances at each completed iteration's assignment."""
    empty_split: list[int] = field(default_factory=list)
    """Empty clusters split at each completed iteration."""
    seconds: list[float] = field(default_factory=list)
    """Wall time of each completed iteration."""
    converged: bool = False
    """Stopped on the tolerance (a resumed run goes straight to the final assignment)."""


@dataclass
class _Bounds:
    """Per-row pruning state between passes: label, a lower bound on the distance to every other
    centroid, an upper bound on the distance to its own. Not checkpointed (12 bytes a row): a
    resumed run starts with a full scan, which gives the same labels, since a row is only
    skipped when its label provably holds."""

    labels: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    valid: bool = False
    movers: np.ndarray | None = None
    """Centroids whose distances the next pass measures instead of bounding (see ``shift``)."""
    movers_extra: float = 0.0
    """How much further than ``lower`` allows for the movers moved."""

    @classmethod
    def for_rows(cls, n: int) -> "_Bounds":
        return cls(np.zeros(n, dtype=np.int32), np.zeros(n, dtype=np.float32),
                   np.zeros(n, dtype=np.float32))

    def shift(self, old: np.ndarray, new: np.ndarray) -> None:
        """Centroids moved old → new: no distance to a centroid changes by more than its move.

        Hamerly's lower bound drops by the largest move. Early on a few centroids (empty-cluster
        splits, merged clusters pulling apart) move far more than the rest: those "movers" are
        set aside and the next pass measures each row's distance to them directly, so the bound
        only drops by the largest move among the others for the rows the movers could unsettle.
        """
        moves = np.sqrt(((new.astype(np.float64) - old) ** 2).sum(axis=1)) * (1 + 1e-6)
        order = np.argsort(moves)[::-1]
        movers = order[:min(_MOVERS, len(order) // 8)]
        largest = float(moves[order[0]])
        residual = float(moves[order[len(movers)]]) if len(movers) < len(order) else 0.0
        if len(movers) == 0 or largest <= 2 * residual:
            movers, residual = order[:0], largest
        self.movers, self.movers_extra = np.sort(movers), largest - residual
        np.add(self.upper, moves[self.labels].astype(np.float32), out=self.upper)
        np.subtract(self.lower, np.float32(residual), out=self.lower)
        np.maximum(self.lower, 0.0, out=self.lower)


def _add_rows(acc: np.ndarray, labels: np.ndarray, xb: np.ndarray) -> np.ndarray:
    """acc[labels[i]] += xb[i] via a sparse one-hot product (float32 within the tile); counts."""
    m, k = len(labels), len(acc)
    counts = np.bincount(labels, minlength=k)
    order = np.argsort(labels, kind="stable").astype(np.int32)
    if k <= 4 * m:  # small k: the k × d product output is cheap, skip finding the used rows
        indptr = np.zeros(k + 1, dtype=np.int32)
        np.cumsum(counts, out=indptr[1:])
        acc += sp.csr_matrix((np.ones(m, np.float32), order, indptr), shape=(k, m)) @ xb
        return counts
    used = np.flatnonzero(counts)
    indptr = np.zeros(len(used) + 1, dtype=np.int32)
    np.cumsum(counts[used], out=indptr[1:])
    acc[used] += sp.csr_matrix((np.ones(m, np.float32), order, indptr), shape=(len(used), m)) @ xb
    return counts


def _lloyd_pass(x_local, xx, finder: Assigner, block, bounds, comm, labels_out=None,
                prune: _Bounds | None = None):
    """One pass: assign every row, and reduce exact global per-cluster sums, counts, inertia.

    ``prune``: per-row bounds from the previous pass (updated in place), so rows whose label
    cannot have changed skip the scan over all centroids.

    Sums go float32 (a group of rows, sparse one-hot product) → float64 (one block, fixed order) →
    int64 fixed point (across blocks and ranks, exact), so the result is rank-count independent.
    """
    k, d = finder.c.shape
    c64 = finder.c.astype(np.float64)
    c_sq = np.einsum("ij,ij->i", c64, c64)
    sums, inertia = FixedSum((k, d), bounds["sum"]), FixedSum(1, bounds["inertia"])
    counts = np.zeros(k, dtype=np.int64)
    acc = np.zeros((k, d))
    for b0, b1 in blocks(0, len(x_local), block):
        acc[:] = 0.0
        block_counts = np.zeros(k, dtype=np.int64)
        # Groups of rows (laid out relative to the block: the same on any rank) share one sparse
        # one-hot product; tiles inside a group share one cache-sized score buffer.
        for g0, g1 in blocks(0, b1 - b0, _GROUP):
            lab = np.empty(g1 - g0, dtype=np.int64)
            for t0, t1 in blocks(0, g1 - g0, finder.tile):
                lo, hi = b0 + g0 + t0, b0 + g0 + t1
                xb = np.ascontiguousarray(x_local[lo:hi], dtype=np.float32)
                lab[t0:t1] = _search(finder, xb, xx[lo:hi], lo, hi, prune)
            if labels_out is not None:
                labels_out[b0 + g0:b0 + g1] = lab
            rows = np.ascontiguousarray(x_local[b0 + g0:b0 + g1], dtype=np.float32)
            block_counts += _add_rows(acc, lab, rows)
        counts += block_counts
        sums.add(acc)
        # Σ‖x − c_label‖² = Σ‖x‖² − 2 Σ_j c_j·S_j + Σ_j n_j‖c_j‖²: from the sums, no per-row
        # distances (pruned rows never compute theirs)
        block_inertia = (float(xx[b0:b1].sum(dtype=np.float64)) + float(block_counts @ c_sq)
                         - 2.0 * float(np.einsum("ij,ij->", c64, acc)))
        inertia.add(np.array([max(block_inertia, 0.0)]))
    if prune is not None:
        prune.valid = finder.backend != "cuda"
    from hpc.mpi import allreduce_

    if comm.Get_size() > 1:
        allreduce_(counts, comm)
    return sums.result(comm), counts, float(inertia.result(comm)[0])


def _search(finder: Assigner, xb, xxb, lo: int, hi: int, prune: _Bounds | None) -> np.ndarray:
    if prune is None:
        return finder(xb, xxb)[0]
    previous = (prune.labels[lo:hi], prune.lower[lo:hi], prune.upper[lo:hi]) if prune.valid else ()
    labels, lower, upper = finder.search(xb, xxb, *previous,
                                         movers=prune.movers if prune.valid else None,
                                         movers_extra=prune.movers_extra)
    if lower is not None:
        prune.labels[lo:hi], prune.lower[lo:hi], prune.upper[lo:hi] = labels, lower, upper
    return labels


def kmeans(x_local: np.ndarray, k: int, comm=None, *, iterations: int = 20, tol: float = 1e-4,
           init: str = "kmeans++", init_sample: int = 0, seed: int = 0, block: int = 8192,
           backend: str = "numpy", row0: int = 0, state: KMeansState | None = None,
           on_iteration: Callable[[KMeansState], None] | None = None, init_trials: int = 5,
           init_refine: int = 20, log_every: int = 1) -> tuple[np.ndarray, np.ndarray, dict]:
    """Lloyd's k-means over the rows of all ranks → (centroids, labels_local, stats).

    Stops after ``iterations`` or when the inertia improves by less than ``tol`` (relative).
    ``state`` resumes a run (from a checkpoint); ``on_iteration(state)`` runs on every rank after
    each iteration (checkpointing, preemption checks). ``row0``: this rank's first global row.
    ``init_trials``/``init_refine``: see ``init_centroids``. ``log_every``: 0 silences progress.
    Labels are the final assignment to the returned centroids.
    """
    comm = as_comm(comm)
    x_local = np.asarray(x_local)
    n, d = global_count(len(x_local), comm), x_local.shape[1]
    if state is None:
        t0 = time.monotonic()
        cent = init_centroids(x_local, k, comm, method=init, sample=init_sample, seed=seed,
                              row0=row0, trials=init_trials, refine=init_refine)
        state = KMeansState(cent)
        init_s = time.monotonic() - t0
    else:
        init_s = 0.0
    bounds = _bounds(x_local, n, comm)
    xx = _row_norms(x_local, block)
    prune = _Bounds.for_rows(len(x_local))
    finder = Assigner(state.centroids, backend, min(TILE, block))
    scanned = []  # share of this rank's rows scanned against all centroids, per iteration
    while state.iteration < iterations and not state.converged:
        t0 = time.monotonic()
        finder.set_centroids(state.centroids)
        sums, counts, inertia = _lloyd_pass(x_local, xx, finder, block,
                                            _with_centroids(bounds, state.centroids, n), comm,
                                            prune=prune)
        scanned.append(finder.scanned / max(len(x_local), 1))
        new = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None],
                       state.centroids).astype(np.float32)
        new, _, n_split = split_empty(new, counts)
        new = broadcast(new, comm)  # identical everywhere already; guards mixed CPUs
        prune.shift(state.centroids, new)
        state.centroids = new
        prev = state.inertia[-1] if state.inertia else None
        state.inertia.append(inertia)
        state.empty_split.append(n_split)
        state.iteration += 1
        state.converged = prev is not None and (prev - inertia) <= tol * max(inertia, 1e-300)
        state.seconds.append(time.monotonic() - t0)
        if comm.Get_rank() == 0 and log_every and state.iteration % log_every == 0:
            _log_iteration(state, iterations, n_split, scanned[-1])
        if on_iteration is not None:
            on_iteration(state)
    t0 = time.monotonic()
    labels = np.empty(len(x_local), dtype=np.int32)
    finder.set_centroids(state.centroids)
    _, counts, inertia = _lloyd_pass(x_local, xx, finder, block,
                                     _with_centroids(bounds, state.centroids, n), comm, labels,
                                     prune)
    stats = {
        "k": k, "n": n, "dim": d, "iterations": state.iteration, "converged": state.converged,
        "inertia_history": state.inertia, "inertia": inertia, "empty_split": int(sum(state.empty_split)),
        "empty_split_per_iteration": state.empty_split, "sizes": counts.tolist(),
        "clusters_used": int((counts > 0).sum()), "largest_share": float(counts.max() / n),
        "seconds_per_iteration": state.seconds, "seconds_init": init_s,
        "rescanned_fraction_per_iteration": [round(f, 4) for f in scanned],
        "seconds_final_assign": time.monotonic() - t0,
    }
    return state.centroids, labels, stats


def assign_all(x_local: np.ndarray, centroids: np.ndarray, comm=None, *, block: int = 8192,
               backend: str = "numpy") -> tuple[np.ndarray, np.ndarray, float]:
    """Sharded assignment to fixed centroids → (labels_local int32, global counts, inertia)."""
    comm = as_comm(comm)
    n = global_count(len(x_local), comm)
    labels = np.empty(len(x_local), dtype=np.int32)
    finder = Assigner(centroids, backend, min(TILE, block))
    bounds = _with_centroids(_bounds(x_local, n, comm), centroids, n)
    _, counts, inertia = _lloyd_pass(x_local, _row_norms(x_local, block), finder, block, bounds,
                                     comm, labels)
    return labels, counts, inertia


def _bounds(x_local, n, comm) -> dict:
    """Global bounds that fix the fixed-point grids (same on every rank)."""
    local = np.zeros(2)
    if len(x_local):
        for lo, hi in blocks(0, len(x_local), TILE):
            xb = np.asarray(x_local[lo:hi], dtype=np.float32)
            local[0] = max(local[0], float(np.abs(xb).max()))
            local[1] = max(local[1], float(np.einsum("ij,ij->i", xb, xb).max()))
    maxabs, maxsq = global_max(local, comm)
    return {"n": n, "maxabs": maxabs, "maxsq": maxsq}


def _with_centroids(bounds: dict, centroids: np.ndarray, n: int) -> dict:
    csq = float(np.einsum("ij,ij->i", centroids, centroids).max())
    return {"sum": n * bounds["maxabs"] + 1e-30,
            "inertia": n * 2.0 * (bounds["maxsq"] + csq) * 1.01 + 1e-30}


def _log_iteration(state: KMeansState, iterations: int, n_split: int, scanned: float) -> None:
    s = state.seconds[-1]
    left = iterations - state.iteration
    log.info("k-means iteration %d/%d: inertia %.6g, %.2f s/iter, %.0f%% of rows rescanned, "
             "ETA ≤ %.0f s%s", state.iteration, iterations, state.inertia[-1], s, 100 * scanned,
             left * s,
             f", {n_split} empty clusters split" if n_split else "")
