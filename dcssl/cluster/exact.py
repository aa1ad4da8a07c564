"""Rank-count-independent reductions: aligned shards, single-process comm, exact fixed-point sums.

Floating-point addition is not associative, so a float64 all-reduce over 2 ranks and over 1 rank
can differ in the last bit — enough to flip a near-tie in k-means and change a label. Values are
therefore rounded onto a fixed-point grid chosen from *global* bounds and accumulated as int64:
integer addition is associative, so the all-reduced total is exact in any order.

- ``FixedSum`` rounds each block's float64 partial result (the PCA's moments); shards are whole
  blocks of ``block`` rows at fixed global offsets (``shard_rows``), so every block is the same
  whatever rank computes it. The grid keeps ≥ ~2^-60 of the bound, far below float32 resolution.
- ``ClusterSums`` and ``exact_total`` round each row (k-means): exact whatever the rows' order or
  grouping, so sums can also be updated incrementally.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp

from hpc.mpi import allreduce_, bcast_, shard_range

__all__ = [
    "SingleComm",
    "as_comm",
    "shard_rows",
    "blocks",
    "FixedSum",
    "ClusterSums",
    "exact_total",
    "gather_rows",
    "global_max",
    "global_count",
]


class SingleComm:
    """A one-rank stand-in for an MPI communicator, so library functions run without MPI."""

    def Get_rank(self) -> int:  # noqa: N802 (mpi4py's names)
        return 0

    def Get_size(self) -> int:  # noqa: N802
        return 1

    def Barrier(self) -> None:  # noqa: N802
        return None

    def bcast(self, obj, root: int = 0):
        return obj

    def allreduce(self, obj, op=None):
        return obj

    def allgather(self, obj):
        return [obj]


def as_comm(comm):
    """``comm`` itself, or a one-rank communicator when None (no MPI initialisation at all)."""
    return SingleComm() if comm is None else comm


def shard_rows(n: int, rank: int, size: int, block: int) -> tuple[int, int]:
    """This rank's contiguous rows [start, stop): whole ``block``-row blocks, shares within a block.

    Built on ``hpc.mpi.shard_range`` over blocks, so a block never straddles two ranks.
    """
    if block < 1:
        raise ValueError(f"block must be ≥ 1, got {block}")
    b0, b1 = shard_range(-(-n // block), rank, size)
    return min(b0 * block, n), min(b1 * block, n)


def blocks(start: int, stop: int, block: int) -> Iterator[tuple[int, int]]:
    """Local [lo, hi) row ranges of the global blocks covering rows [start, stop) of a shard.

    ``start`` is the shard's first global row; blocks follow global multiples of ``block`` so the
    same rows form the same block on any rank.
    """
    pos = start
    while pos < stop:
        end = min((pos // block + 1) * block, stop)
        yield pos - start, end - start
        pos = end


def _scale(bound: np.ndarray) -> np.ndarray:
    """Powers of two that map |value| ≤ bound onto integers below 2^61."""
    bound = np.maximum(np.asarray(bound, dtype=np.float64), 1e-300)
    exponent = np.clip(61 - np.ceil(np.log2(bound)), -1000, 1000)
    return np.ldexp(1.0, exponent.astype(np.int64))


class FixedSum:
    """Sum float64 block results exactly: round each onto a grid fixed by a global bound, add int64.

    ``bound`` must bound the absolute value of the *total* (not just of one block), elementwise or
    as a scalar; it has to be the same on every rank (derive it from all-reduced quantities).
    """

    def __init__(self, shape: tuple[int, ...] | int, bound):
        self.total = np.zeros(shape, dtype=np.int64)
        self.scale = np.broadcast_to(_scale(bound), self.total.shape)

    def add(self, value: np.ndarray) -> None:
        self.total += np.rint(np.asarray(value, dtype=np.float64) * self.scale).astype(np.int64)

    def result(self, comm=None) -> np.ndarray:
        """The exact global total (all-reduced over ``comm``) as float64."""
        total = self.total.copy()
        if comm is not None:
            allreduce_(total, comm)
        return total.astype(np.float64) / self.scale


def exact_total(values: np.ndarray, bound: float, comm=None) -> float:
    """Σ values over all ranks, each value rounded once onto the grid ``FixedSum`` uses for
    ``bound`` (≥ |total|, the same on every rank): the same bits for any split of the values."""
    scale = float(_scale(bound))
    total = np.array(
        [int(np.rint(np.asarray(values, dtype=np.float64) * scale).astype(np.int64).sum())], dtype=np.int64
    )
    if comm is not None:
        allreduce_(total, comm)
    return float(total[0]) / scale


# Rows turned into fixed point and summed per cluster at once (float64 scratch: rows × d).
_SUM_ROWS = 2048


class ClusterSums:
    """Per-cluster sums and counts of rows, exact whatever the order the rows come in.

    Each row is rounded once onto a fixed-point grid (2⁻³⁶ of the largest |value| for up to 2²⁵
    rows, coarser beyond: far below float32 resolution) and added as an integer, so 1 or R ranks,
    a from-scratch sum or incremental ``move``s of the rows whose label changed all give the same
    bits. Within a group of rows the integers are added as float64, exact below 2⁵³.
    """

    def __init__(self, k: int, d: int, maxabs: float, n: int):
        bits = min(36, 61 - int(np.ceil(np.log2(max(n, 2)))))
        top = int(np.ceil(np.log2(maxabs))) if maxabs > 0 else 0
        self.scale = float(np.ldexp(1.0, bits - top))  # |row value · scale| ≤ 2^bits
        self.sums = np.zeros((k, d), dtype=np.int64)
        self.counts = np.zeros(k, dtype=np.int64)
        self._buf = np.empty((_SUM_ROWS, d))

    def reset(self) -> None:
        self.sums[:] = 0
        self.counts[:] = 0

    def add(self, x: np.ndarray, labels: np.ndarray) -> None:
        """Add every row of ``x`` to its cluster ``labels[i]``."""
        for lo, fixed in self._fixed(x, None, len(labels)):
            self._add_fixed(fixed, labels[lo : lo + len(fixed)], 1)

    def move(self, x: np.ndarray, rows: np.ndarray, old: np.ndarray, new: np.ndarray) -> None:
        """Rows ``rows`` of ``x`` left clusters ``old`` for ``new``."""
        for lo, fixed in self._fixed(x, rows, len(rows)):
            self._add_fixed(fixed, new[lo : lo + len(fixed)], 1)
            np.negative(fixed, out=fixed)
            self._add_fixed(fixed, old[lo : lo + len(fixed)], -1)

    def _fixed(self, x: np.ndarray, rows: np.ndarray | None, n: int):
        """(offset, rows on the fixed-point grid as integer-valued float64) group by group."""
        for lo in range(0, n, _SUM_ROWS):
            hi = min(lo + _SUM_ROWS, n)
            fixed = self._buf[: hi - lo]
            np.multiply(x[lo:hi] if rows is None else x[rows[lo:hi]], self.scale, out=fixed)
            np.rint(fixed, out=fixed)
            yield lo, fixed

    def _add_fixed(self, fixed: np.ndarray, labels: np.ndarray, sign: int) -> None:
        m = len(labels)
        counts = np.bincount(labels, minlength=len(self.counts))
        self.counts += sign * counts
        used = np.flatnonzero(counts)
        indptr = np.zeros(len(used) + 1, dtype=np.int64)
        np.cumsum(counts[used], out=indptr[1:])
        order = np.argsort(labels, kind="stable")
        onehot = sp.csr_matrix((np.ones(m), order, indptr), shape=(len(used), m))
        self.sums[used] += (onehot @ fixed).astype(np.int64)

    def result(self, comm=None) -> tuple[np.ndarray, np.ndarray]:
        """The global (all-reduced) sums as float64 and counts."""
        sums, counts = self.sums.copy(), self.counts.copy()
        if comm is not None:
            allreduce_(sums, comm)
            allreduce_(counts, comm)
        return sums.astype(np.float64) / self.scale, counts


def global_count(n_local: int, comm) -> int:
    buf = np.array([n_local], dtype=np.int64)
    return int(allreduce_(buf, comm)[0])


def global_max(value: np.ndarray | float, comm) -> np.ndarray:
    """Elementwise maximum over ranks (exact in any order)."""
    buf = np.array(value, dtype=np.float64, ndmin=1).copy()
    return allreduce_(buf, comm, op="max")


def gather_rows(
    x_local: np.ndarray, start: int, stop: int, index: np.ndarray, comm, root: int | None = 0
) -> np.ndarray | None:
    """Rows ``index`` (sorted global indices) of a row-sharded array, assembled on ``root``.

    Every rank must pass the same ``index``. With ``root=None`` every rank gets the rows. Rows
    travel as float32/float64 buffers through one all-reduce of mostly-zero slots: each row is
    non-zero on exactly one rank, so the sum is exact.
    """
    comm = as_comm(comm)
    out = np.zeros((len(index), x_local.shape[1]), dtype=x_local.dtype)
    mine = (index >= start) & (index < stop)
    out[mine] = x_local[index[mine] - start]
    if comm.Get_size() == 1:
        return out
    if root is None:
        return allreduce_(out, comm)
    from mpi4py import MPI

    recv = np.empty_like(out) if comm.Get_rank() == root else None
    comm.Reduce(out, recv, op=MPI.SUM, root=root)
    return recv


def broadcast(array: np.ndarray, comm, root: int = 0) -> np.ndarray:
    """Rank ``root``'s array on every rank (others pass an array of the same shape and dtype)."""
    comm = as_comm(comm)
    return bcast_(np.ascontiguousarray(array), comm, root)
