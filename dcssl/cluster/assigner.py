"""Exact nearest-centroid search: float32 matrix products, float64 only where float32 cannot decide.

A row's float32 score s_j = x·c_j − ‖c_j‖²/2 (nearest centroid = highest score) differs from the
exact one by at most E = γ(‖x‖·max‖c‖ + max‖c‖²), γ = (d+1)·2⁻²⁴ (a dot product of d+1 terms,
plus the float32 half-norm), whatever the summation order — so for any BLAS, thread count, row
grouping or device (float32 products: TF32 is switched off). When the best float32 score beats
every other by more than a little over 2E, the float32 winner is the exact nearest centroid.
Otherwise ("near-tie", rare) the centroids scoring within that much of the best are compared by
float64 distances, the lowest index winning a tie: the margin left over keeps every excluded
centroid farther than float64 error could hide. Either way a row's label is the float64 nearest
centroid — never an artefact of how its product was computed — which is what makes labels
identical for 1, 2 or R ranks, with or without pruning, and after a resume.

Each search also returns bounds for pruning (``bounds``): an upper bound on the distance to the
row's own centroid and a lower bound on the distance to every other one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

__all__ = ["Assigner", "Found", "TILE"]

# Rows per matrix-product tile (cache-sized).
TILE = 512
# Scores of one tile against one chunk of centroids stay under this many bytes (cache-friendly,
# and k = 100 k never allocates a tile × k matrix).
SCORE_BYTES = 8 << 20
# float64 (row, candidate) differences formed at once when resolving near-ties.
_PAIR_BYTES = 1 << 20
_U32 = 2.0**-24
# Near-tie margin in units of E: both scores' errors, and room the float64 comparison never needs.
_NEAR = 2.002


class Found(NamedTuple):
    """Result of a search over some rows."""

    labels: np.ndarray
    """Exact nearest centroid, int64."""
    dist: np.ndarray
    """Squared distance to it, float32 (float32 accuracy)."""
    upper: np.ndarray
    """Upper bound on the distance (not squared) to the own centroid, float32."""
    lower: np.ndarray
    """Lower bound on the distance to every other centroid, float32."""


def _augment(xb: np.ndarray) -> np.ndarray:
    """[x | −1]: with centroids as [c | ‖c‖²/2]ᵀ one product gives the scores x·c − ‖c‖²/2."""
    xa = np.empty((len(xb), xb.shape[1] + 1), dtype=np.float32)
    xa[:, :-1], xa[:, -1] = xb, -1.0
    return xa


def _matmul_fn(backend: str) -> Callable:
    if backend == "numpy":
        return lambda a, b, out: np.matmul(a, b, out=out)
    import torch

    if backend == "torch":
        return lambda a, b, out: torch.mm(torch.from_numpy(a), torch.from_numpy(b), out=torch.from_numpy(out))
    raise ValueError(f"backend {backend!r}: choose numpy, torch or cuda")


class Assigner:
    """``assigner.search(x_tile, row_norms²) → Found``; ``backend``: numpy, torch or cuda."""

    def __init__(self, centroids: np.ndarray, backend: str = "numpy", tile: int = TILE):
        self.backend, self.tile = backend, tile
        self.matmul = None if backend == "cuda" else _matmul_fn(backend)
        self.buf = self.xa = None
        self.set_centroids(centroids)

    def set_centroids(self, centroids: np.ndarray) -> None:
        """Search against new centroids, reusing the work buffers (no heap growth per pass)."""
        c = np.ascontiguousarray(centroids, dtype=np.float32)
        if len(c) == 0:
            raise ValueError("assign needs at least one centroid")
        self.k, self.c = len(c), c
        self.c64 = c.astype(np.float64)
        half = 0.5 * np.einsum("ij,ij->i", c, c)
        self.half_max = float(0.5 * np.einsum("ij,ij->i", self.c64, self.c64).max())
        self.c_norm_max = float(np.sqrt(2.0 * self.half_max))
        self.err_rel = (c.shape[1] + 1) * _U32 * (1 + 1e-3)  # γ of the module doc, rounded up
        # slack for float32 row norms and float32 square roots in the bounds
        self.rel = 1e-6 + (c.shape[1] + 2) * 2 * _U32
        self.scanned = 0  # rows scanned over all centroids since the last set_centroids
        self._subset: tuple[np.ndarray, np.ndarray] | None = None  # see _augmented
        # [c | ‖c‖²/2]ᵀ by chunks of centroids (cuda: one chunk, for settling near-ties here)
        fits = max(1, SCORE_BYTES // (4 * self.tile))
        self.chunk = self.k if self.backend == "cuda" else min(self.k, fits)
        self.c_t = [
            np.ascontiguousarray(
                np.concatenate([c[j : j + self.chunk], half[j : j + self.chunk, None]], axis=1).T
            )
            for j in range(0, self.k, self.chunk)
        ]
        if self.backend == "cuda":
            import torch

            self.c_gpu = torch.from_numpy(c).cuda()
            self.half_gpu = torch.from_numpy(half).cuda()
            return
        if self.buf is None or self.buf.shape[1] != self.chunk or self.xa.shape[1] != c.shape[1] + 1:
            self.buf = np.empty((self.tile, self.chunk), dtype=np.float32)
            self.xa = np.full((self.tile, c.shape[1] + 1), -1.0, dtype=np.float32)

    def score_error(self, xxb: np.ndarray) -> np.ndarray:
        """E: the bound on |float32 score − exact score| of each row (see the module doc)."""
        return self.err_rel * (np.sqrt(xxb) * self.c_norm_max + 2.0 * self.half_max)

    def search(self, xb: np.ndarray, xxb: np.ndarray) -> Found:
        """Exact nearest centroid of each row of a tile (≤ ``tile`` rows), with pruning bounds."""
        m = len(xb)
        self.scanned += m
        if self.backend == "cuda":
            labels, best, second = self._scan_cuda(xb)
        else:
            self.xa[:m, :-1] = xb
            labels, best, second = self._scan(self.xa[:m])
        err = self.score_error(xxb)
        slack = self.rel * xxb + 2.0 * err  # squared-distance units
        dist = np.maximum(xxb - 2.0 * best, 0.0)
        upper = np.sqrt(dist + slack)
        lower_sq = xxb - 2.0 * second - slack
        near = np.flatnonzero(best - second <= _NEAR * err)
        if len(near):
            labels[near], d64 = self._resolve(xb, near, labels[near], best[near] - _NEAR * err[near])
            dist[near], upper[near] = d64, np.sqrt(d64)
            # the float32 best may be another centroid now: bound every centroid by it
            lower_sq[near] = xxb[near] - 2.0 * best[near] - slack[near]
        lower = np.sqrt(np.maximum(lower_sq, 0.0)) * (1 - self.rel)
        return Found(
            labels,
            dist.astype(np.float32),
            (upper * (1 + self.rel)).astype(np.float32),
            lower.astype(np.float32),
        )

    def dist64(self, xb: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """float64 squared distances from rows ``xb[rows]`` to centroids ``cols`` — one formula
        for every near-tie, so a row's label never depends on where it was decided."""
        x64 = xb.astype(np.float64)
        dist = np.empty(len(rows))
        step = max(1, _PAIR_BYTES // (8 * xb.shape[1]))
        for lo in range(0, len(rows), step):
            diff = x64[rows[lo : lo + step]] - self.c64[cols[lo : lo + step]]
            np.square(diff, out=diff)
            dist[lo : lo + step] = diff.sum(axis=1)
        return dist

    def distances_to(self, xb: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Upper bound on each row's distance to centroid ``labels[i]`` (float32)."""
        diff = xb - self.c[labels]
        return (np.sqrt(np.einsum("ij,ij->i", diff, diff)) * (1 + self.rel)).astype(np.float32)

    def lower_to(self, xb: np.ndarray, xxb: np.ndarray, labels: np.ndarray, subset: np.ndarray) -> np.ndarray:
        """Lower bound on each row's distance to the centroids ``subset`` (sorted) other than its
        own."""
        score = _augment(xb) @ self._augmented(subset)
        slot = np.minimum(np.searchsorted(subset, labels), len(subset) - 1)
        own = np.flatnonzero(subset[slot] == labels)
        score[own, slot[own]] = -np.inf
        closest = xxb - 2.0 * score.max(axis=1) - self.rel * xxb - 2.0 * self.score_error(xxb)
        return (np.sqrt(np.maximum(closest, 0.0)) * (1 - self.rel)).astype(np.float32)

    def _augmented(self, subset: np.ndarray) -> np.ndarray:
        """[c | ‖c‖²/2]ᵀ of the centroids ``subset`` — built once per set of centroids."""
        if self._subset is None or self._subset[0] is not subset:
            cs = self.c[subset]
            ct = np.concatenate([cs, 0.5 * np.einsum("ij,ij->i", cs, cs)[:, None]], axis=1)
            self._subset = (subset, np.ascontiguousarray(ct.T))
        return self._subset[1]

    def _scan(self, xa: np.ndarray):
        """Best label, best score and runner-up score of every row over all chunks."""
        m = len(xa)
        rows = np.arange(m)
        labels = best = runner_up = None
        for j, ct in enumerate(self.c_t):
            score = self.buf[:m, : ct.shape[1]]
            self.matmul(xa, ct, score)
            idx = score.argmax(axis=1)
            val = score[rows, idx]
            score[rows, idx] = -np.inf
            second = score.max(axis=1)
            if j == 0:
                labels, best, runner_up = idx, val, second
                continue
            runner_up = np.maximum(np.maximum(runner_up, second), np.minimum(best, val))
            better = val > best  # strict: on a tie the earlier (lower) index stays
            labels[better] = idx[better] + j * self.chunk
            best[better] = val[better]
        return labels, best, runner_up

    def _scan_cuda(self, xb: np.ndarray):
        import torch

        xt = torch.from_numpy(xb).to(self.c_gpu.device)
        precision = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")  # TF32 would void the error bound
        try:
            score = torch.addmm(self.half_gpu, xt, self.c_gpu.T, beta=-1.0)
        finally:
            torch.set_float32_matmul_precision(precision)
        if self.k == 1:
            val, idx = score.max(dim=1)
            return idx.cpu().numpy(), val.cpu().numpy(), np.full(len(xb), -np.inf, np.float32)
        top, idx = score.topk(2, dim=1)
        top = top.cpu().numpy()
        return idx[:, 0].cpu().numpy(), top[:, 0].copy(), top[:, 1].copy()

    def _candidates(self, xb: np.ndarray, near: np.ndarray, best_labels: np.ndarray, floor: np.ndarray):
        """(row, centroid) pairs — rows ``near`` of the tile — whose float32 score reaches
        ``floor``, row-major in index order. The scores of a one-chunk scan are still in the
        buffer (the best set to −inf); otherwise they are recomputed."""
        if self.backend != "cuda" and len(self.c_t) == 1:
            rows, cols = np.nonzero(self.buf[near, : self.k] >= floor[:, None])
            rows = np.concatenate([rows, np.arange(len(near))])
            cols = np.concatenate([cols, best_labels])
        else:
            xa = _augment(xb[near])
            found = [np.nonzero(xa @ ct >= floor[:, None]) for ct in self.c_t]
            rows = np.concatenate([r for r, _ in found])
            cols = np.concatenate([c + j * self.chunk for j, (_, c) in enumerate(found)])
        order = np.lexsort((cols, rows))
        return rows[order], cols[order]

    def _resolve(
        self, xb: np.ndarray, near: np.ndarray, best_labels: np.ndarray, floor: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Float64 nearest among the centroids scoring ≥ ``floor`` (lowest index on a tie)."""
        rows, cols = self._candidates(xb, near, best_labels, floor)
        dist = self.dist64(xb[near], rows, cols)
        order = np.lexsort((cols, dist, rows))  # by row, then distance, then index
        first = np.flatnonzero(np.r_[True, rows[order][1:] != rows[order][:-1]])
        pick = order[first]
        return cols[pick], dist[pick]
