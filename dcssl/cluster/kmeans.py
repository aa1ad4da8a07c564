"""Sharded Lloyd k-means: exact assignment, exact sums, pruned passes, deterministic empty splits.

Each rank holds its rows; centroids are replicated. Labels are the exact nearest centroids
(``assigner``), per-cluster sums exact integers (``exact.ClusterSums``), so the same seed gives
bit-identical centroids and labels for 1, 2 or R ranks, any BLAS or thread count, with or without
pruning, and after a resume. Per iteration only k×d sums and k counts cross the network. After the
first pass most rows skip the scan over all centroids (``bounds``), and the sums are updated only
for the rows whose label changed. ``assign`` is also the step that labels every point after RCC.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .assigner import TILE, Assigner
from .bounds import Bounds, centroid_gaps, search_shard
from .exact import ClusterSums, as_comm, blocks, broadcast, exact_total, global_count, global_max
from .groups import GroupBounds, auto_groups
from .sampling import sample_index
from .seeding import init_centroids

__all__ = [
    "group_centroids",
    "refine_on_sample",
    "assign",
    "assign_all",
    "kmeans",
    "KMeansState",
    "init_centroids",
    "split_empty",
    "sample_index",
]

log = logging.getLogger(__name__)

# faiss's split factor: the two halves of a split cluster move ±1/1024 apart.
_SPLIT_EPS = 1.0 / 1024
# Elkan's centroid-gap test costs k²·d per pass: used while k ≤ a rank's rows / this.
_GAPS_RATIO = 16


def _row_norms(x_local: np.ndarray, block: int) -> np.ndarray:
    xx = np.empty(len(x_local), dtype=np.float32)
    for lo, hi in blocks(0, len(x_local), block):
        xb = np.asarray(x_local[lo:hi], dtype=np.float32)
        xx[lo:hi] = np.einsum("ij,ij->i", xb, xb)
    return xx


def assign(
    x_local: np.ndarray, centroids: np.ndarray, *, block: int = 8192, backend: str = "numpy"
) -> tuple[np.ndarray, np.ndarray]:
    """Exact nearest centroid of every row: (labels int64, squared distances float32).

    ``backend``: numpy (OpenBLAS), torch (MKL) or cuda. Sharded use: each rank calls it on its rows.
    """
    x_local = np.asarray(x_local)
    finder = Assigner(centroids, backend, min(TILE, block))
    labels = np.empty(len(x_local), dtype=np.int64)
    dist = np.empty(len(x_local), dtype=np.float32)
    xx = _row_norms(x_local, block)
    for lo in range(0, len(x_local), finder.tile):
        hi = min(lo + finder.tile, len(x_local))
        found = finder.search(np.ascontiguousarray(x_local[lo:hi], dtype=np.float32), xx[lo:hi])
        labels[lo:hi], dist[lo:hi] = found.labels, found.dist
    return labels, dist


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


class _Pass:
    """What a rank keeps between Lloyd passes: row norms, pruning bounds, its exact cluster sums."""

    def __init__(
        self, x_local: np.ndarray, k: int, comm, block: int, backend: str, centroids: np.ndarray, groups: int
    ):
        self.x, self.comm = x_local, comm
        n = global_count(len(x_local), comm)
        self.xx = _row_norms(x_local, block)
        maxabs, maxsq = _global_extent(x_local, self.xx, comm, block)
        self.xx_total = exact_total(self.xx, n * maxsq * 1.01 + 1e-30, comm)
        self.sums = ClusterSums(k, x_local.shape[1], maxabs, n)
        t = groups or auto_groups(k, x_local.shape[1])
        if t > 1:  # Yinyang group bounds (large k)
            t = min(t, k)
            self.bounds = GroupBounds(
                len(x_local), centroids, group_centroids(centroids, t), t, backend, np.sqrt(maxsq)
            )
        else:  # Hamerly's single bound and Elkan's centroid gaps
            self.bounds = Bounds.for_rows(len(x_local))
        self.finder = Assigner(centroids, backend, min(TILE, block))
        self.use_gaps = k * _GAPS_RATIO <= len(x_local)

    def run(self, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Assign every row to ``centroids`` → (labels, global sums, global counts, inertia)."""
        self.finder.set_centroids(centroids)
        pruned = self.bounds.valid
        old = self.bounds.labels
        if isinstance(self.bounds, GroupBounds):
            old = old.copy()
            labels = self.bounds.search(self.x, self.xx, self.finder)
        else:
            gaps = centroid_gaps(centroids, self.bounds.movers) if pruned and self.use_gaps else None
            labels = search_shard(self.x, self.xx, self.finder, self.bounds, gaps)
        changed = np.flatnonzero(labels != old) if pruned else None
        if changed is not None and 2 * len(changed) <= len(labels):
            self.sums.move(self.x, changed, old[changed], labels[changed])
        else:
            self.sums.reset()
            self.sums.add(self.x, labels)
        self.bounds.labels = labels
        sums, counts = self.sums.result(self.comm)
        return labels, sums, counts, _inertia(self.xx_total, centroids, sums, counts)

    @property
    def scanned(self) -> float:
        """Share of this rank's rows scanned against all centroids in the last pass."""
        if isinstance(self.bounds, GroupBounds):  # centroids scored, in rows of all k
            return self.bounds.scanned / max(len(self.x), 1)
        return self.finder.scanned / max(len(self.x), 1)


def _inertia(xx_total: float, centroids: np.ndarray, sums: np.ndarray, counts: np.ndarray) -> float:
    """Σ‖x − c_label‖² = Σ‖x‖² − 2 Σ_j c_j·S_j + Σ_j n_j‖c_j‖², from global quantities only (so
    the same on every rank; pruned rows never measure their distance)."""
    c = centroids.astype(np.float64)
    value = (
        xx_total - 2.0 * float(np.einsum("ij,ij->", c, sums)) + float(counts @ np.einsum("ij,ij->i", c, c))
    )
    return max(value, 0.0)


def kmeans(
    x_local: np.ndarray,
    k: int,
    comm=None,
    *,
    iterations: int = 20,
    tol: float = 1e-4,
    init: str = "auto",
    init_sample: int = 0,
    seed: int = 0,
    block: int = 8192,
    backend: str = "numpy",
    row0: int = 0,
    state: KMeansState | None = None,
    on_iteration: Callable[[KMeansState], None] | None = None,
    init_trials: int = 5,
    init_refine: int = 20,
    log_every: int = 1,
    groups: int = 0,
    init_resume: dict | None = None,
    on_init_round: Callable[[dict], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Lloyd's k-means over the rows of all ranks → (centroids, labels_local, stats).

    Stops after ``iterations`` or when the inertia improves by less than ``tol`` (relative).
    ``state`` resumes a run (from a checkpoint); ``on_iteration(state)`` runs on every rank after
    each iteration (checkpointing, preemption checks). ``row0``: this rank's first global row.
    ``init_trials``/``init_refine``: see ``init_centroids``. ``log_every``: 0 silences progress.
    ``groups``: centroid groups for pruning (``groups.auto_groups`` when 0; 1: a single bound).
    ``init_resume``/``on_init_round``: checkpoint the k-means|| rounds (``seeding``);
    ``on_iteration`` also runs once after the init (iteration 0).
    Labels are the final assignment to the returned centroids.
    """
    comm = as_comm(comm)
    x_local = np.asarray(x_local)
    n, d = global_count(len(x_local), comm), x_local.shape[1]
    if state is None:
        t0 = time.monotonic()
        cent = init_centroids(
            x_local,
            k,
            comm,
            method=init,
            sample=init_sample,
            seed=seed,
            row0=row0,
            trials=init_trials,
            refine=init_refine,
            resume=init_resume,
            on_round=on_init_round,
            refiner=refine_on_sample,
        )
        state = KMeansState(cent)
        init_s = time.monotonic() - t0
        if on_iteration is not None:  # iteration 0: the init is never redone
            on_iteration(state)
    else:
        init_s = 0.0
    lloyd = _Pass(x_local, k, comm, block, backend, state.centroids, groups)
    scanned = []  # share of this rank's rows scanned against all centroids, per iteration
    while state.iteration < iterations and not state.converged:
        t0 = time.monotonic()
        _, sums, counts, inertia = lloyd.run(state.centroids)
        scanned.append(lloyd.scanned)
        new = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], state.centroids).astype(
            np.float32
        )
        new, _, n_split = split_empty(new, counts)
        new = broadcast(new, comm)  # identical everywhere already; guards mixed CPUs
        lloyd.bounds.shift(state.centroids, new)
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
    labels, _, counts, inertia = lloyd.run(state.centroids)
    stats = {
        "k": k,
        "n": n,
        "dim": d,
        "iterations": state.iteration,
        "converged": state.converged,
        "inertia_history": state.inertia,
        "inertia": inertia,
        "empty_split": int(sum(state.empty_split)),
        "empty_split_per_iteration": state.empty_split,
        "sizes": counts.tolist(),
        "clusters_used": int((counts > 0).sum()),
        "largest_share": float(counts.max() / n),
        "seconds_per_iteration": state.seconds,
        "seconds_init": init_s,
        "rescanned_fraction_per_iteration": [round(f, 4) for f in scanned],
        "seconds_final_assign": time.monotonic() - t0,
    }
    return state.centroids, labels, stats


def assign_all(
    x_local: np.ndarray, centroids: np.ndarray, comm=None, *, block: int = 8192, backend: str = "numpy"
) -> tuple[np.ndarray, np.ndarray, float]:
    """Sharded assignment to fixed centroids → (labels_local int32, global counts, inertia)."""
    comm = as_comm(comm)
    labels, _, counts, inertia = _Pass(
        np.asarray(x_local), len(centroids), comm, block, backend, centroids, 1
    ).run(centroids)
    return labels, counts, inertia


def _global_extent(x_local, xx, comm, block: int) -> tuple[float, float]:
    """Largest |value| and largest squared row norm over all ranks (fix the exact-sum grids)."""
    local = np.zeros(2)
    for lo, hi in blocks(0, len(x_local), block):
        local[0] = max(local[0], float(np.abs(np.asarray(x_local[lo:hi], dtype=np.float32)).max()))
    local[1] = float(xx.max()) if len(xx) else 0.0
    maxabs, maxsq = global_max(local, comm)
    return float(maxabs), float(maxsq)


def _log_iteration(state: KMeansState, iterations: int, n_split: int, scanned: float) -> None:
    s = state.seconds[-1]
    left = iterations - state.iteration
    log.info(
        "k-means iteration %d/%d: inertia %.6g, %.2f s/iter, %.0f%% of rows rescanned, ETA ≤ %.0f s%s",
        state.iteration,
        iterations,
        state.inertia[-1],
        s,
        100 * scanned,
        left * s,
        f", {n_split} empty clusters split" if n_split else "",
    )


def group_centroids(centroids: np.ndarray, t: int, seed: int = 0) -> np.ndarray:
    """Group of each centroid (int64, values < t): 5 Lloyd iterations on the centroids, as the
    paper. Deterministic (exact k-means), so every rank forms the same groups."""
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    _, groups, _ = kmeans(c, t, None, iterations=5, tol=0.0, init="random", seed=seed, log_every=0)
    return groups.astype(np.int64)


def refine_on_sample(
    rows: np.ndarray, centroids: np.ndarray, comm, iterations: int
) -> tuple[np.ndarray, float]:
    """Lloyd from ``centroids`` on seeding's sample rows → (centroids, inertia); 0 iterations:
    the inertia of ``centroids`` as they are. The refiner ``seeding`` is given."""
    cent, _, st = kmeans(
        rows, len(centroids), comm, iterations=iterations, tol=0.0, state=KMeansState(centroids), log_every=0
    )
    return cent, float(st["inertia"])
