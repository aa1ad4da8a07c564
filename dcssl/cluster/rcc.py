"""Robust Continuous Clustering (Shah & Koltun, PNAS 2017) on one process, sparse and iterative.

Every point gets a representative u_i; a robust (Geman-McClure) penalty pulls representatives of
neighbouring points together, and graduated non-convexity (μ halved step by step) lets clusters
separate. Each iteration is one sparse linear solve (I + λ(D−W))U = X, here by Jacobi-
preconditioned conjugate gradients on all columns at once, warm-started. Clusters are the
connected components of graph edges whose representatives ended up closer than ε. No k is given.

The graph is the mutual-kNN graph (exact kNN via faiss) plus the minimum spanning tree of the kNN
graph, so it stays connected where the data is. The cluster job runs this on a sample and assigns
every point to the nearest cluster mean with the sharded assignment step.
"""

from __future__ import annotations

import logging
import time

import numpy as np
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components, minimum_spanning_tree
from scipy.sparse.linalg import eigsh

__all__ = ["rcc", "rcc_graph"]

log = logging.getLogger(__name__)


def _knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of every row (itself excluded): (index n×k, squared dist n×k)."""
    import faiss

    index = faiss.IndexFlatL2(x.shape[1])
    index.add(x)
    dist, nbr = index.search(x, k + 1)
    own = nbr == np.arange(len(x))[:, None]
    # Drop the point itself (or, among exact duplicates, the last column) from each row.
    drop = np.where(own.any(axis=1), own.argmax(axis=1), k)
    keep = np.ones_like(own)
    keep[np.arange(len(x)), drop] = False
    return nbr[keep].reshape(len(x), k), dist[keep].reshape(len(x), k)


def rcc_graph(x: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Edges (i < j) of the mutual-kNN graph plus the kNN graph's minimum spanning tree."""
    n = len(x)
    k = min(k, n - 1)
    nbr, dist = _knn(np.ascontiguousarray(x, dtype=np.float32), k)
    rows = np.repeat(np.arange(n), k)
    a, b = np.minimum(rows, nbr.ravel()), np.maximum(rows, nbr.ravel())
    keys, seen = np.unique(a.astype(np.int64) * n + b, return_counts=True)
    mutual = keys[seen == 2]  # listed from both ends
    # MST of the symmetric kNN graph; +tiny so exact duplicates keep their (zero-length) edge.
    w = sp.coo_matrix((np.sqrt(np.maximum(dist.ravel(), 0)) + 1e-12, (a, b)), shape=(n, n)).tocsr()
    tree = minimum_spanning_tree(w).tocoo()
    tree_keys = np.minimum(tree.row, tree.col).astype(np.int64) * n + np.maximum(tree.row, tree.col)
    edges = np.union1d(mutual, tree_keys)
    return edges // n, edges % n


def _laplacian(n: int, i: np.ndarray, j: np.ndarray, w: np.ndarray) -> sp.csr_matrix:
    adj = sp.coo_matrix(
        (np.concatenate([w, w]), (np.concatenate([i, j]), np.concatenate([j, i]))), shape=(n, n)
    ).tocsr()
    return (sp.diags(np.asarray(adj.sum(axis=1)).ravel()) - adj).tocsr()


def _top_eig(lap: sp.csr_matrix, seed: int) -> float:
    v0 = np.random.default_rng([seed, 7]).standard_normal(lap.shape[0])
    return float(eigsh(lap, k=1, which="LA", v0=v0, tol=1e-3, return_eigenvectors=False)[0])


def _cg(m: sp.csr_matrix, b: np.ndarray, u: np.ndarray, tol: float, maxiter: int) -> int:
    """Jacobi-preconditioned CG for M U = B, all columns at once, in place on ``u``."""
    inv_diag = 1.0 / m.diagonal()[:, None]
    r = b - m @ u
    z = r * inv_diag
    p = z.copy()
    rz = np.einsum("ij,ij->j", r, z)
    target = tol * np.maximum(np.linalg.norm(b, axis=0), 1e-300)
    for it in range(maxiter):
        if (np.linalg.norm(r, axis=0) <= target).all():
            return it
        mp = m @ p
        pmp = np.einsum("ij,ij->j", p, mp)
        alpha = np.divide(rz, pmp, out=np.zeros_like(rz), where=pmp > 0)
        u += alpha * p
        r -= alpha * mp
        z = r * inv_diag
        rz_new = np.einsum("ij,ij->j", r, z)
        beta = np.divide(rz_new, rz, out=np.zeros_like(rz), where=rz > 0)
        p = z + beta * p
        rz = rz_new
    return maxiter


def _project(x: np.ndarray, dim: int) -> np.ndarray:
    """Centred rows on their top ``dim`` principal directions (no whitening)."""
    x = x.astype(np.float64)
    x = x - x.mean(axis=0)
    if dim and dim < x.shape[1]:
        values, vectors = np.linalg.eigh(x.T @ x)
        x = x @ vectors[:, np.argsort(values)[::-1][:dim]]
    return x


def rcc(
    x: np.ndarray,
    *,
    knn: int = 10,
    dim: int = 32,
    iterations: int = 100,
    mu_every: int = 4,
    tol: float = 1e-3,
    cg_tol: float = 1e-4,
    cg_iterations: int = 100,
    seed: int = 0,
) -> tuple[np.ndarray, dict]:
    """Cluster the rows of ``x`` → (labels 0..K-1 int64 with K found by RCC, info dict)."""
    t0 = time.monotonic()
    n = len(x)
    if n < 3:
        raise ValueError(f"RCC needs at least 3 points, got {n}")
    data = _project(x, dim)
    i, j = rcc_graph(data, knn)
    t_graph = time.monotonic() - t0
    degree = np.bincount(np.concatenate([i, j]), minlength=n).astype(np.float64)
    weights = degree.mean() / np.sqrt(degree[i] * degree[j])
    length = np.sqrt(((data[i] - data[j]) ** 2).sum(axis=1))
    # ε, δ from the shortest 1 % of edges, ignoring near-duplicates (as the authors' code).
    real = np.sort(length[length > 1e-2 * np.median(length)]) if (length > 0).any() else length
    real = real if len(real) else np.sort(length)
    top = max(1, int(np.ceil(0.01 * len(i))))
    delta = float(real[: min(250, top)].mean())
    epsilon = float(real[:top].mean())
    mu = 3.0 * float(real[-1]) ** 2
    xi = float(np.sqrt(max(np.linalg.eigvalsh(data.T @ data).max(), 0.0)))
    lpq = np.ones(len(i))
    lam = xi / max(_top_eig(_laplacian(n, i, j, weights), seed), 1e-12)
    u = data.copy()
    objective, count, it, cg_total = [], 0, 0, 0
    for it in range(1, iterations + 1):
        diff = ((u[i] - u[j]) ** 2).sum(axis=1)
        lpq = (mu / (mu + diff)) ** 2
        objective.append(
            0.5 * float(((data - u) ** 2).sum())
            + lam * 0.5 * float((lpq * weights) @ diff + mu * weights @ (np.sqrt(lpq) - 1) ** 2)
        )
        lap = _laplacian(n, i, j, weights * lpq)
        cg_total += _cg((sp.identity(n, format="csr") + lam * lap).tocsr(), data, u, cg_tol, cg_iterations)
        count += 1
        small = len(objective) > 1 and abs(objective[-2] - objective[-1]) < tol * abs(objective[-1])
        if small or count == mu_every:
            if mu >= delta:
                mu /= 2
            elif count == mu_every:
                mu = 0.5 * delta
            else:
                break
            lam = xi / max(_top_eig(lap, seed), 1e-12)
            count = 0
        if it % 10 == 0:
            log.info(
                "RCC iteration %d/%d: objective %.6g, μ %.3g, %d CG steps so far, %.1f s",
                it,
                iterations,
                objective[-1],
                mu,
                cg_total,
                time.monotonic() - t0,
            )
    close = np.sqrt(((u[i] - u[j]) ** 2).sum(axis=1)) < epsilon
    graph = sp.coo_matrix((np.ones(int(close.sum())), (i[close], j[close])), shape=(n, n))
    k, labels = connected_components(graph, directed=False)
    info = {
        "clusters": int(k),
        "iterations": it,
        "edges": int(len(i)),
        "cg_steps": cg_total,
        "delta": delta,
        "epsilon": epsilon,
        "seconds_graph": t_graph,
        "seconds": time.monotonic() - t0,
        "objective": objective[-1] if objective else None,
    }
    log.info(
        "RCC on %d points: %d clusters after %d iterations (%d CG steps), %.1f s",
        n,
        k,
        it,
        cg_total,
        info["seconds"],
    )
    return labels.astype(np.int64), info
