"""Distributed PCA with whitening: all-reduced mean and covariance in exact float64, then eigh.

Three streaming passes over a rank's rows (bounds, sums, nothing kept but d×d), so a memory-mapped
float16 shard is never materialised; each block's pages are dropped once read (``_drop_pages``),
so a rank's peak is its float32 copy, not that plus the float16 pages. Results are bit-identical for any number of ranks when the
shards come from ``exact.shard_rows`` with the same ``block`` (see ``exact``).
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import time
from dataclasses import dataclass

import numpy as np

from .exact import FixedSum, as_comm, blocks, broadcast, global_count, global_max

__all__ = ["PCA", "pca_fit", "pca_transform"]

log = logging.getLogger(__name__)


@dataclass
class PCA:
    """A fitted projection: ``y = (x - mean) @ proj`` (columns already divided by √λ if whitened)."""

    mean: np.ndarray
    """Feature mean, float64, shape (d,)."""
    proj: np.ndarray
    """Projection matrix, float32, shape (d, d_out), principal directions by decreasing variance."""
    eigenvalues: np.ndarray
    """Variance along each kept direction, float64, shape (d_out,)."""
    explained: float
    """Fraction of the total variance the kept directions carry."""

    def state(self) -> dict[str, np.ndarray]:
        return {
            "pca_mean": self.mean,
            "pca_proj": self.proj,
            "pca_eigenvalues": self.eigenvalues,
            "pca_explained": np.array(self.explained),
        }

    @classmethod
    def from_state(cls, state: dict) -> PCA:
        return cls(
            np.asarray(state["pca_mean"]),
            np.asarray(state["pca_proj"]),
            np.asarray(state["pca_eigenvalues"]),
            float(state["pca_explained"]),
        )


_PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4


def _drop_pages(x_local: np.ndarray, lo: int, hi: int) -> None:
    """Unmap the pages rows [lo, hi) of a read-only memory-mapped bank occupy (they stay in the
    page cache, out of this rank's RSS): the float16 shard is never resident beside its float32
    copy. Partial pages at either end stay."""
    if not isinstance(x_local, np.memmap) or x_local.flags.writeable or hi <= lo:
        return
    row = x_local.strides[0]
    start = x_local.ctypes.data + lo * row
    first, last = -(-start // _PAGE) * _PAGE, (start + (hi - lo) * row) // _PAGE * _PAGE
    if last > first:
        ctypes.CDLL(None).madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED)


def _rows(x_local: np.ndarray, lo: int, hi: int) -> np.ndarray:
    block = np.asarray(x_local[lo:hi], dtype=np.float32)
    if x_local.dtype != np.float32:  # a copy: the bank's pages are no longer needed
        _drop_pages(x_local, lo, hi)
    if not np.isfinite(block).all():
        bad = lo + int(np.argwhere(~np.isfinite(block))[0, 0])
        raise ValueError(
            f"local row {bad} holds NaN or inf; the features are corrupt "
            "(a diverged training run?) — re-extract them"
        )
    return block


def _tiles(n_local: int, block: int, d: int):
    """(block start, [(lo, hi) tiles]) — tiles of ≤ 2^21 values, laid out relative to each block."""
    tile = max(64, min(4096, (1 << 21) // max(d, 1)))
    for b0, b1 in blocks(0, n_local, block):
        yield [(b0 + t0, b0 + t1) for t0, t1 in blocks(0, b1 - b0, tile)]


def _progress(name: str, done: int, total: int, t0: float, last: list[float]) -> None:
    now = time.monotonic()
    if now - last[0] >= 10 or done == total:
        last[0] = now
        rate = done / max(now - t0, 1e-9)
        log.info(
            "%s: %d/%d rows (%.0f rows/s, ETA %.0f s)",
            name,
            done,
            total,
            rate,
            (total - done) / max(rate, 1e-9),
        )


def pca_fit(x_local: np.ndarray, d_out: int, comm=None, *, whiten: bool = True, block: int = 8192) -> PCA:
    """Fit PCA (optionally whitening) on the rows of all ranks; every rank gets the same result.

    ``x_local`` is this rank's rows (any float dtype, a memmap is fine), taken from a shard of
    ``block``-aligned rows. ``d_out`` is clamped to the feature dimension.
    """
    comm = as_comm(comm)
    n_local, d = x_local.shape
    n = global_count(n_local, comm)
    if n < 2:
        raise ValueError(f"PCA needs at least 2 rows, got {n}")
    d_out = min(d_out, d)
    maxabs = np.zeros(d)
    for tiles in _tiles(n_local, block, d):
        for lo, hi in tiles:
            np.maximum(maxabs, np.abs(_rows(x_local, lo, hi)).max(axis=0), out=maxabs)
    maxabs = global_max(maxabs, comm)
    # A data row as pivot: sums of (x - p) stay small, so S2/n - m m^T loses no precision.
    pivot = broadcast(
        np.asarray(x_local[0], dtype=np.float32).copy() if comm.Get_rank() == 0 else np.zeros(d, np.float32),
        comm,
    ).astype(np.float64)
    span = 2 * maxabs + 1e-30
    s1, s2 = FixedSum(d, n * span), FixedSum((d, d), n * np.outer(span, span))
    t0 = time.monotonic()
    last = [t0]
    for tiles in _tiles(n_local, block, d):
        b1, b2 = np.zeros(d), np.zeros((d, d))
        for lo, hi in tiles:  # float64 in a fixed order within the block, exact across blocks
            centred = _rows(x_local, lo, hi).astype(np.float64) - pivot
            b1 += centred.sum(axis=0)
            b2 += centred.T @ centred
        s1.add(b1)
        s2.add(b2)
        if comm.Get_rank() == 0:
            _progress("pca covariance", tiles[-1][1], n_local, t0, last)
    m = s1.result(comm) / n
    cov = s2.result(comm) / n - np.outer(m, m)
    mean = pivot + m
    values, vectors = _eigh_rank0(cov, comm)
    order = np.argsort(values)[::-1][:d_out]
    values, vectors = np.maximum(values[order], 0.0), vectors[:, order]
    # Fix each direction's sign (largest component positive) so runs are comparable.
    flip = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(d_out)])
    vectors = vectors * np.where(flip == 0, 1.0, flip)
    total = float(np.trace(cov))
    if whiten:
        floor = 1e-8 * max(float(values[0]), 1e-30)
        vectors = vectors / np.sqrt(values + floor)
    return PCA(mean, vectors.astype(np.float32), values, float(values.sum() / total) if total > 0 else 1.0)


def _eigh_rank0(cov: np.ndarray, comm) -> tuple[np.ndarray, np.ndarray]:
    """eigh on rank 0 with one BLAS thread (thread counts change LAPACK's last bits), broadcast."""
    d = cov.shape[0]
    buf = np.zeros((d + 1, d))
    if comm.Get_rank() == 0:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1):
            values, vectors = np.linalg.eigh(cov)
        buf[0], buf[1:] = values, vectors
    broadcast(buf, comm)
    return buf[0].copy(), buf[1:].copy()


def pca_transform(
    x_local: np.ndarray, pca: PCA | None, *, l2_normalize: bool = True, block: int = 8192
) -> np.ndarray:
    """Project (and whiten) rows, then L2-normalise them; float32, shape (n_local, d_out).

    With ``pca=None`` the rows are only converted (and normalised).
    """
    n_local, d = x_local.shape
    d_out = pca.proj.shape[1] if pca is not None else d
    out = np.empty((n_local, d_out), dtype=np.float32)
    if pca is not None:
        # float64 product, rounded once to float32: OpenBLAS's sgemm (numpy 2.4's 0.3.31) gives
        # rows last-bit results that depend on how many rows the call holds (1 vs 8,192: 9 of 16
        # values differ), so a row's features, and then the centroids, would depend on the rank
        # count. dgemm's differences are ~1e-16 and vanish in the rounding.
        mean32, proj64 = pca.mean.astype(np.float32), pca.proj.astype(np.float64)
    for lo, hi in (t for tiles in _tiles(n_local, block, d) for t in tiles):
        rows = _rows(x_local, lo, hi)
        y = out[lo:hi]
        if pca is not None:
            y[...] = (rows - mean32).astype(np.float64) @ proj64
        else:
            y[...] = rows
        if l2_normalize:
            norms = np.sqrt(np.einsum("ij,ij->i", y, y))
            y /= np.where(norms > 0, norms, 1.0)[:, None]
    return out
