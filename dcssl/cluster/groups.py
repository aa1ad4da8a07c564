"""Group bounds (Yinyang k-means, Ding et al. ICML 2015): pruning that still works at large k.

The centroids are split once into t groups (a small k-means on the centroids themselves). Each
row keeps an upper bound u on the distance to its own centroid and one lower bound per group on
the distance to every centroid of that group but its own. When the centroids move, u grows by
the own centroid's move and a group's bound shrinks only by the largest move *in that group* —
Hamerly's single bound shrinks by the largest move of all k, and at k in the thousands some
centroid always moves far, so that bound fails for every row. A row whose u is below all its
group bounds keeps its label; otherwise u is tightened to the measured distance, and only the
groups whose bound is still not above u (and the row's own group) are rescanned.

Exactness: bounds use the float32 error margins of ``assigner`` (every bound holds for the exact
distances) and near-ties among the rescanned centroids are settled by the same float64
distances with the same lowest-index rule, so labels are exactly those of a full scan — the
groups only decide what is skipped. Groups, bounds and scale are per rank and never checkpointed:
a resumed run starts with a full scan.

Memory: the group bounds are float16 (rounded down, in units of a power-of-two scale), 2·t bytes
per row; the automatic t keeps that at ~10 % of the row's float32 size (``auto_groups``).
"""

from __future__ import annotations

import numpy as np

from .assigner import _NEAR, Assigner, _augment

__all__ = ["GroupBounds", "auto_groups"]

# Rows rescanned at once (float32 copies and t-wide bound tables of this many rows).
_TILE = 2048
# Rows whose float16 bounds are updated at once.
_BLOCK = 1 << 16
# Relative widening after each float32 update (covers its rounding, 2⁻²⁴), as in ``bounds``.
_ROUND = 2.0**-22
_F16_MAX = 65504.0
# Below this k the single bound with Elkan's centroid gaps prunes as well at 1/t the memory.
GROUPS_FROM_K = 2000


def auto_groups(k: int, d: int) -> int:
    """t for ``groups=0``: k/10 centroids per group (the paper's choice), capped so the float16
    bounds stay at ~10 % of a float32 row (2t ≤ 0.4·d bytes); 1 (no groups) below 2,000 centroids."""
    if k < GROUPS_FROM_K:
        return 1
    return max(2, min(k // 10, d // 5))


def _store_down(value: np.ndarray, out: np.ndarray) -> None:
    """float32 bounds (scale units) → float16 never above them (nearest rounding is ≤ 2⁻¹¹
    relative for normal values, ≤ 2⁻²⁵ absolute below; both taken off first)."""
    value *= np.float32(1 - 2.0**-10)
    value -= np.float32(2.0**-24)
    np.clip(value, 0.0, _F16_MAX, out=value)
    out[...] = value


class GroupBounds:
    """A rank's per-row group bounds between passes (see the module doc)."""

    def __init__(
        self, n: int, centroids: np.ndarray, groups: np.ndarray, t: int, backend: str, extent: float
    ):
        self.groups = groups  # each centroid's group (kmeans.group_centroids), values < t
        self.members = [np.flatnonzero(self.groups == g) for g in range(t)]
        self.t, self.k, self.backend = t, len(centroids), backend
        # float16 unit: the largest possible distance (2 × largest row norm) maps below 2¹⁵
        self.scale = float(np.ldexp(1.0, int(np.ceil(np.log2(max(2.0 * extent, 1e-30) / 32768.0)))))
        self.labels = np.zeros(n, dtype=np.int32)
        self.upper = np.zeros(n, dtype=np.float32)
        self.lower = np.zeros((n, t), dtype=np.float16)
        self.valid = False
        self.scanned = 0.0  # row-equivalents of centroids scored in the last pass

    def set_centroids(self, centroids: np.ndarray) -> None:
        c = np.ascontiguousarray(centroids, dtype=np.float32)
        half = 0.5 * np.einsum("ij,ij->i", c, c)
        self.ct = [np.ascontiguousarray(np.c_[c[m], half[m]].T) for m in self.members]
        if self.backend == "cuda":
            import torch

            self.ct = [torch.from_numpy(ct).cuda() for ct in self.ct]

    def shift(self, old: np.ndarray, new: np.ndarray) -> None:
        """Centroids moved old → new: u grows by the own centroid's move, each group's bound
        shrinks by the largest move in that group."""
        moves = np.sqrt(((new.astype(np.float64) - old) ** 2).sum(axis=1)) * (1 + 1e-6)
        self.upper += moves.astype(np.float32)[self.labels]
        self.upper *= np.float32(1 + _ROUND)
        worst = (self.group_moves(moves) / self.scale * (1 + 1e-6)).astype(np.float32)
        for lo in range(0, len(self.lower), _BLOCK):
            value = self.lower[lo : lo + _BLOCK].astype(np.float32)
            value -= worst
            _store_down(value, self.lower[lo : lo + _BLOCK])

    def group_moves(self, moves: np.ndarray) -> np.ndarray:
        """The largest move in each group: how far any of its centroids came nearer a row."""
        return np.array([moves[m].max() if len(m) else 0.0 for m in self.members])

    def search(self, x: np.ndarray, xx: np.ndarray, finder: Assigner) -> np.ndarray:
        """Exact nearest centroid of every row → int32 labels; bounds updated in place."""
        self.set_centroids(finder.c)
        self.scanned = 0.0
        n = len(x)
        if not self.valid:
            for lo in range(0, n, _TILE):
                self._rescan(x, xx, finder, np.arange(lo, min(lo + _TILE, n)), None)
            self.valid = True
            return self.labels.copy()
        unsure = np.concatenate(
            [
                lo + np.flatnonzero(self.upper[lo : lo + _BLOCK] >= self._floor(slice(lo, lo + _BLOCK)))
                for lo in range(0, n, _BLOCK)
            ]
        )
        for lo in range(0, len(unsure), _TILE):
            rows = unsure[lo : lo + _TILE]
            xb = np.ascontiguousarray(x[rows], dtype=np.float32)
            self.upper[rows] = finder.distances_to(xb, self.labels[rows])
            self.scanned += len(rows) / self.k
            bound = self.lower[rows].astype(np.float32) * np.float32(self.scale)
            fails = np.flatnonzero(self.upper[rows] >= bound.min(axis=1))
            if len(fails):
                cand = self.upper[rows[fails], None] >= bound[fails]
                cand[np.arange(len(fails)), self.groups[self.labels[rows[fails]]]] = True
                self._rescan(x, xx, finder, rows[fails], cand)
        return self.labels.copy()

    def _floor(self, rows) -> np.ndarray:
        """Lower bound on the distance to every centroid but the own one (min over groups)."""
        return self.lower[rows].min(axis=1).astype(np.float32) * np.float32(self.scale)

    def _product(self, xa: np.ndarray, g: int) -> np.ndarray:
        """float32 scores x·c − ‖c‖²/2 of rows ``xa`` ([x | −1]) against group g."""
        if self.backend == "numpy":
            return xa @ self.ct[g]
        import torch

        if self.backend == "torch":
            return torch.mm(torch.from_numpy(xa), self.ct[g]).numpy()
        precision = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")  # TF32 would void the error bound
        try:
            return torch.mm(torch.from_numpy(xa).to(self.ct[g].device), self.ct[g]).cpu().numpy()
        finally:
            torch.set_float32_matmul_precision(precision)

    def _rescan(self, x, xx, finder: Assigner, rows: np.ndarray, cand: np.ndarray | None) -> None:
        """Score rows ``rows`` against the groups ``cand`` (m × t; None: all) → labels, u, and
        fresh bounds for those groups (the others keep theirs)."""
        m, t = len(rows), self.t
        xb = np.ascontiguousarray(x[rows], dtype=np.float32)
        xxb = xx[rows]
        xa = _augment(xb)
        top1 = np.full((m, t), -np.inf, dtype=np.float32)
        top2 = np.full((m, t), -np.inf, dtype=np.float32)
        arg1 = np.zeros((m, t), dtype=np.int64)
        for g in range(t) if cand is None else np.flatnonzero(cand.any(axis=0)):
            if len(self.members[g]) == 0:
                continue
            r = slice(None) if cand is None else np.flatnonzero(cand[:, g])
            s = self._product(xa if cand is None else xa[r], g)
            self.scanned += s.size / self.k
            at = np.arange(len(s))
            i = s.argmax(axis=1)
            top1[r, g], arg1[r, g] = s[at, i], self.members[g][i]
            if s.shape[1] > 1:
                s[at, i] = -np.inf
                top2[r, g] = s.max(axis=1)
        at = np.arange(m)
        gb = top1.argmax(axis=1)
        best, labels = top1[at, gb], arg1[at, gb]
        others = top1.copy()
        others[at, gb] = top2[at, gb]
        second = others.max(axis=1)
        err = finder.score_error(xxb)
        slack = finder.rel * xxb + 2.0 * err
        upper = np.sqrt(np.maximum(xxb - 2.0 * best, 0.0) + slack)
        near = np.flatnonzero(best - second <= _NEAR * err)
        if len(near):
            floor = best[near] - _NEAR * err[near]
            labels[near], d64 = self._resolve(finder, xa, xb, near, labels[near], floor, cand)
            upper[near] = np.sqrt(d64)
            others[near] = top1[near]  # the float32 best may be another centroid: bound by it
        lower = np.sqrt(np.maximum(xxb[:, None] - 2.0 * others - slack[:, None], 0.0)) * (1 - finder.rel)
        held = np.empty((m, t), dtype=np.float16)
        _store_down((lower / self.scale).astype(np.float32), held)
        self.labels[rows] = labels
        self.upper[rows] = upper * (1 + finder.rel)
        self.lower[rows] = held if cand is None else np.where(cand, held, self.lower[rows])

    def _resolve(self, finder: Assigner, xa, xb, near, best_labels, floor, cand):
        """Float64 nearest among the scanned centroids scoring ≥ ``floor`` (lowest index on a
        tie, as ``Assigner``)."""
        rows, cols = [np.arange(len(near))], [best_labels]
        for g in range(self.t) if cand is None else np.flatnonzero(cand[near].any(axis=0)):
            if len(self.members[g]) == 0:
                continue
            sel = np.arange(len(near)) if cand is None else np.flatnonzero(cand[near, g])
            s = self._product(xa[near[sel]], g)
            r, c = np.nonzero(s >= floor[sel, None])
            rows.append(sel[r])
            cols.append(self.members[g][c])
        rows, cols = np.concatenate(rows), np.concatenate(cols)
        dist = finder.dist64(xb[near], rows, cols)
        order = np.lexsort((cols, dist, rows))
        first = np.flatnonzero(np.r_[True, rows[order][1:] != rows[order][:-1]])
        pick = order[first]
        return cols[pick], dist[pick]
