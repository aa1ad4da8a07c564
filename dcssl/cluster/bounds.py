"""Pruned assignment: skip the scan over all centroids for rows whose label provably holds.

Per row (12 bytes): its label, an upper bound u on the distance to its centroid a and a lower
bound on the distance to every other centroid (Hamerly 2010). When the centroids move, u grows by
a's move and the lower bound shrinks by the largest move. Each pass also measures the centroids'
distances to one another (k²·d), and Elkan's lemma gives a second lower bound: every other
centroid j is at least D(a, j) − u away, so at least D(a, nearest) − u. A row keeps its label
without a scan while u is below the larger lower bound. Otherwise u is tightened to the measured
distance and the test retried; a row that only a's nearest neighbour could take (D(a, second
nearest) − u > u) is decided from those two distances; the rest are scanned
(``Assigner.search``). Every bound carries rounding margins, so a skipped row's label is exactly
what the scan would give — pruning never changes a result.

A few centroids ("movers": empty-cluster splits, merged clusters pulling apart) often move far
more than the rest; they are set aside so the lower bound only drops by the largest move among
the others, and rows that then fail the test only because of them measure their distance to the
movers directly.

Not checkpointed: a resumed run starts with a full scan, which gives the same labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .assigner import Assigner

__all__ = ["Bounds", "Gaps", "centroid_gaps", "search_shard"]

# Centroids at most set aside as movers per iteration (and at most this share of k): each costs
# an unsettled row one distance.
_MOVERS = 128
_MOVERS_SHARE = 8
# Rows gathered at once to tighten their bounds and rescan (float32 copies: rows × d).
_BATCH = 2048
# Relative widening of a bound after each float32 update (covers its rounding, 2⁻²⁴).
_ROUND = 2.0**-22
# Bytes of the centroid-distance matrix formed at once (rows × k float32).
_GAP_BYTES = 2 << 20


@dataclass
class Bounds:
    """A rank's per-row pruning state between passes."""

    labels: np.ndarray
    """Label of each row after the last pass, int32."""
    upper: np.ndarray
    """Upper bound on the distance to the own centroid, float32."""
    lower: np.ndarray
    """Lower bound on the distance to every other centroid (movers aside), float32."""
    valid: bool = False
    """False until a first full pass, and after a resume."""
    movers: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    """Centroids whose distances the next pass measures instead of bounding (see ``shift``)."""
    movers_extra: float = 0.0
    """How much further than ``lower`` allows for the movers moved."""

    @classmethod
    def for_rows(cls, n: int) -> Bounds:
        return cls(np.zeros(n, dtype=np.int32), np.zeros(n, dtype=np.float32), np.zeros(n, dtype=np.float32))

    def shift(self, old: np.ndarray, new: np.ndarray) -> None:
        """Centroids moved old → new: no distance to a centroid changes by more than its move."""
        moves = np.sqrt(((new.astype(np.float64) - old) ** 2).sum(axis=1)) * (1 + 1e-6)
        order = np.argsort(moves)[::-1]
        movers = order[: min(_MOVERS, len(order) // _MOVERS_SHARE)]
        largest = float(moves[order[0]])
        residual = float(moves[order[len(movers)]]) if len(movers) < len(order) else 0.0
        if len(movers) == 0 or largest <= 2 * residual:
            movers, residual = order[:0], largest
        self.movers, self.movers_extra = np.sort(movers), largest - residual
        self.upper += moves.astype(np.float32)[self.labels]
        self.upper *= np.float32(1 + _ROUND)
        self.lower -= np.float32(residual)
        self.lower *= np.float32(1 - _ROUND)
        np.maximum(self.lower, 0.0, out=self.lower)


@dataclass
class Gaps:
    """Lower bounds on centroid-to-centroid distances (Elkan's lemma: a row within distance u of
    its centroid a is at least D(a, j) − u from every other centroid j)."""

    nearest: np.ndarray
    """Distance from each centroid to its nearest other centroid, float32 (k)."""
    neighbour: np.ndarray
    """That nearest other centroid, int64 (k)."""
    second: np.ndarray
    """Distance from each centroid to its second-nearest other centroid, float32 (k)."""
    movers: np.ndarray | None
    """Distance from each centroid to its nearest mover other than itself (None: no movers)."""


def centroid_gaps(centroids: np.ndarray, movers: np.ndarray) -> Gaps:
    """Centroid-to-nearest-centroid (and centroid-to-mover) distances, rounded down.

    One float32 product (k²·d); its rounding error, below 2(d+2)·2⁻²⁴·(‖a‖² + ‖b‖²) for any
    summation order, is taken off every squared distance."""
    c = np.ascontiguousarray(centroids, dtype=np.float32)
    k, d = c.shape
    sq = np.einsum("ij,ij->i", c, c) * np.float32(1 - 2 * (d + 4) * 2.0**-24)
    has_movers = len(movers) > 0
    nearest, second = np.empty(k, dtype=np.float32), np.empty(k, dtype=np.float32)
    neighbour = np.empty(k, dtype=np.int64)
    to_movers = np.empty(k, dtype=np.float32) if has_movers else None
    step = max(1, _GAP_BYTES // (4 * k))
    for lo in range(0, k, step):
        hi = min(lo + step, k)
        dd = c[lo:hi] @ c.T
        dd *= -2.0
        dd += sq[None, :]
        dd += sq[lo:hi, None]
        rows = np.arange(hi - lo)
        dd[rows, np.arange(lo, hi)] = np.inf  # k = 1: inf, nothing to beat
        if has_movers:
            to_movers[lo:hi] = dd[:, movers].min(axis=1)
        neighbour[lo:hi] = dd.argmin(axis=1)
        nearest[lo:hi] = dd[rows, neighbour[lo:hi]]
        dd[rows, neighbour[lo:hi]] = np.inf
        second[lo:hi] = dd.min(axis=1)
    shrink = np.float32(1 - 4 * _ROUND)
    nearest, second = (np.sqrt(np.maximum(v, 0.0)) * shrink for v in (nearest, second))
    if has_movers:
        to_movers = np.sqrt(np.maximum(to_movers, 0.0)) * shrink
    return Gaps(nearest, neighbour, second, to_movers)


def search_shard(
    x_local: np.ndarray, xx: np.ndarray, finder: Assigner, state: Bounds, gaps: Gaps | None = None
) -> np.ndarray:
    """Exact nearest centroid of every row → int32 labels; ``state`` bounds updated in place.

    Without valid bounds every row is scanned. ``gaps``: ``centroid_gaps`` of the current
    centroids and ``state.movers`` (Elkan's test), or None to skip that test.
    """
    if not state.valid:
        labels = np.empty(len(x_local), dtype=np.int32)
        _scan(x_local, xx, finder, state, labels, state.lower, None)
        state.valid = True
        return labels
    labels = state.labels.copy()
    lower = _lower(state, gaps, labels, state.upper, slice(None))
    unsure = np.flatnonzero(state.upper >= lower)
    scan = [
        _settle(x_local, xx, finder, state, gaps, labels, lower, unsure[lo : lo + _BATCH])
        for lo in range(0, len(unsure), _BATCH)
    ]
    if scan:  # rows that still fail, scanned in full tiles
        _scan(x_local, xx, finder, state, labels, lower, np.concatenate(scan))
    state.lower = lower
    return labels


def _scan(x_local, xx, finder: Assigner, state: Bounds, labels, lower, rows) -> None:
    """Scan rows ``rows`` (all when None) over all centroids, tile by tile."""
    n = len(x_local) if rows is None else len(rows)
    for lo in range(0, n, finder.tile):
        at = slice(lo, min(lo + finder.tile, n)) if rows is None else rows[lo : lo + finder.tile]
        found = finder.search(np.ascontiguousarray(x_local[at], dtype=np.float32), xx[at])
        labels[at], state.upper[at], lower[at] = found.labels, found.upper, found.lower


def _lower(
    state: Bounds,
    gaps: Gaps | None,
    labels: np.ndarray,
    upper: np.ndarray,
    rows,
    measured: np.ndarray | None = None,
) -> np.ndarray:
    """Lower bound on the distance from rows ``rows`` to every centroid but their own.

    ``state.lower`` covers the non-movers; the movers are covered by ``measured``, or
    else by the bound before their extra move and by their distance to the row's centroid."""
    lower = state.lower[rows]
    if len(state.movers):
        if measured is None:
            measured = lower - np.float32(state.movers_extra)
            if gaps is not None:
                np.maximum(measured, (gaps.movers[labels] - upper) * np.float32(1 - _ROUND), out=measured)
        lower = np.minimum(lower, measured)
    if gaps is not None:
        lower = np.maximum(lower, (gaps.nearest[labels] - upper) * np.float32(1 - _ROUND))
    return np.maximum(lower, 0.0)


def _settle(
    x_local, xx, finder: Assigner, state: Bounds, gaps, labels, lower, rows: np.ndarray
) -> np.ndarray:
    """Rows that failed the test: tighten to the own distance and retry; decide rows only their
    centroid's nearest neighbour could take from those two distances; rows that fail only
    because of the movers measure them. Returns the rows that still fail."""
    xb = np.ascontiguousarray(x_local[rows], dtype=np.float32)
    xxb, lab = xx[rows], labels[rows]
    upper = finder.distances_to(xb, lab)
    state.upper[rows] = upper
    bound = _lower(state, gaps, lab, upper, rows)
    fails = upper >= bound
    if gaps is not None:
        pair = np.flatnonzero(
            fails & ((gaps.second[lab] - upper) * np.float32(1 - _ROUND) > upper * np.float32(1 + 1e-6))
        )
        if len(pair):
            at = rows[pair]
            labels[at], state.upper[at], bound[pair] = _pair(finder, gaps, xb[pair], lab[pair], upper[pair])
            fails[pair] = False
    if len(state.movers):
        rest = (
            state.lower[rows]
            if gaps is None
            else np.maximum(state.lower[rows], (gaps.nearest[lab] - upper) * np.float32(1 - _ROUND))
        )
        only = np.flatnonzero(fails & (upper < rest))  # settled but for the movers
        if len(only):
            measured = finder.lower_to(xb[only], xxb[only], lab[only], state.movers)
            bound[only] = _lower(state, gaps, lab[only], upper[only], rows[only], measured)
            fails[only] = upper[only] >= bound[only]
    lower[rows] = bound
    return rows[fails]


def _pair(finder: Assigner, gaps: Gaps, xb: np.ndarray, own: np.ndarray, upper: np.ndarray):
    """Rows for which every centroid but their own and its nearest neighbour is provably farther
    (second-nearest gap − u > u): the nearer of the two by float64 distance, lowest index on a
    tie (the rule near-ties follow everywhere). → (labels, upper, lower) bounds."""
    other = gaps.neighbour[own]
    m = len(xb)
    dist = finder.dist64(xb, np.r_[np.arange(m), np.arange(m)], np.r_[own, other])
    d_own, d_other = dist[:m], dist[m:]
    take = (d_other < d_own) | ((d_other == d_own) & (other < own))
    labels = np.where(take, other, own)
    near, far = np.where(take, d_other, d_own), np.where(take, d_own, d_other)
    rest = (gaps.second[own] - upper) * np.float32(1 - _ROUND)  # every other centroid
    lower = np.minimum(np.sqrt(far) * (1 - finder.rel), rest)
    return labels, (np.sqrt(near) * (1 + finder.rel)).astype(np.float32), lower.astype(np.float32)
