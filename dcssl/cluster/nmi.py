"""Normalized mutual information of two labelings, sharded by rows, from sparse contingency counts.

No rank ever builds the k_a × k_b table: each rank counts its (a, b) pairs, the pairs are routed to
an owner rank by hash (all-to-all), owners sum their share and add up their part of the mutual
information; only O(k) marginals and one float are all-reduced. Matches scikit-learn's
``normalized_mutual_info_score`` (arithmetic mean normalisation).
"""

from __future__ import annotations

import numpy as np

from hpc.mpi import allreduce_

from .exact import as_comm

__all__ = ["nmi", "contingency_pairs"]


def contingency_pairs(a: np.ndarray, b: np.ndarray, kb: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct pair keys a·kb + b and their counts (sorted by key)."""
    keys = a.astype(np.int64) * kb + b.astype(np.int64)
    return np.unique(keys, return_counts=True)


def _route(keys: np.ndarray, counts: np.ndarray, comm) -> tuple[np.ndarray, np.ndarray]:
    """Send every pair to rank key % size; return the pairs this rank owns (summed)."""
    size = comm.Get_size()
    if size == 1:
        return keys, counts
    from mpi4py import MPI

    owner = keys % size
    order = np.argsort(owner, kind="stable")
    keys, counts, owner = keys[order], counts[order].astype(np.int64), owner[order]
    send_n = np.bincount(owner, minlength=size).astype(np.int64)
    recv_n = np.empty(size, dtype=np.int64)
    comm.Alltoall(send_n, recv_n)
    sd = np.concatenate([[0], np.cumsum(send_n)[:-1]])
    rd = np.concatenate([[0], np.cumsum(recv_n)[:-1]])
    pairs = np.stack([keys, counts], axis=1)
    got = np.empty((int(recv_n.sum()), 2), dtype=np.int64)
    comm.Alltoallv([pairs, (send_n * 2, sd * 2), MPI.INT64_T], [got, (recv_n * 2, rd * 2), MPI.INT64_T])
    keys, inverse = np.unique(got[:, 0], return_inverse=True)
    return keys, np.bincount(inverse, weights=got[:, 1], minlength=len(keys)).astype(np.int64)


def _entropy(counts: np.ndarray, n: int) -> float:
    p = counts[counts > 0] / n
    return float(-(p * np.log(p)).sum())


def nmi(labels_a_local: np.ndarray, labels_b_local: np.ndarray, comm=None) -> float:
    """NMI between two labelings of the same rows, each rank passing its rows of both."""
    comm = as_comm(comm)
    a = np.asarray(labels_a_local, dtype=np.int64)
    b = np.asarray(labels_b_local, dtype=np.int64)
    if a.shape != b.shape:
        raise ValueError(f"labelings differ in length ({len(a)} vs {len(b)})")
    if len(a) and (a.min() < 0 or b.min() < 0):
        raise ValueError("labels must be non-negative integers")
    top = np.array([a.max(initial=-1) + 1, b.max(initial=-1) + 1, len(a)], dtype=np.int64)
    ka, kb = (int(v) for v in allreduce_(top[:2].copy(), comm, op="max"))
    n = int(allreduce_(top[2:].copy(), comm)[0])
    if n == 0:
        raise ValueError("NMI of empty labelings")
    rows = allreduce_(np.bincount(a, minlength=ka).astype(np.int64), comm)
    cols = allreduce_(np.bincount(b, minlength=kb).astype(np.int64), comm)
    keys, counts = _route(*contingency_pairs(a, b, kb), comm)
    nij = counts.astype(np.float64)
    ai, bj = rows[keys // kb].astype(np.float64), cols[keys % kb].astype(np.float64)
    part = np.array([float((nij / n * (np.log(nij * n) - np.log(ai * bj))).sum())])
    mi = max(float(allreduce_(part, comm)[0]), 0.0)
    ha, hb = _entropy(rows, n), _entropy(cols, n)
    if ha == 0 and hb == 0:
        return 1.0  # both labelings put everything in one cluster: identical (as scikit-learn)
    if ha == 0 or hb == 0:
        return 0.0
    return float(min(mi / ((ha + hb) / 2), 1.0))
