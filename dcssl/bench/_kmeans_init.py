"""``python -m dcssl.bench kmeans --preset init-quality``: inertia after 20 Lloyd iterations from
k-means|| against today's k-means++ (5 refined restarts, the best kept), at sizes where greedy
k-means++ still runs.

Data of real structure: BloodMNIST's 17,092 blood-cell images (all splits), pixels projected on
their 64 leading principal components (256 at k = 2,000, past ``init=auto``'s switch to k-means||
at that dimension: real, heavy-tailed data where auto runs k-means||); and a 20,000 × 32 Gaussian
mixture with k/10 components (k over-clusters it ten-fold, as DeepCluster's k does; 100,000 rows
at k = 4,000, where auto also picks k-means||). Each case says what auto would run. One seed decides little (seeds differ by
≈ 0.1 %), so each case is the mean over ``--seeds`` seeds. Positive ``rel_diff``: k-means|| worse.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

__all__ = ["init_quality"]

# (data, k, rows or PCA dimension): k = 300 as the earlier measurement, k = 1,000 where init=auto
# still gives k-means++ (d ≤ 256), and past auto's switch, where k-means++ is forced (≈ 1 Tflop
# per restart set, the largest this bench can afford): BloodMNIST at d = 256, k = 2,000, and the
# mixture on 100 k rows at k = 4,000 (d = 32).
CASES = (
    ("blood", 300, 64),
    ("mixture", 300, 20_000),
    ("blood", 1000, 64),
    ("mixture", 1000, 20_000),
    ("blood", 2000, 256),
    ("mixture", 4000, 100_000),
)


def _blood(npz: Path, dim: int = 64) -> np.ndarray:
    z = np.load(npz)
    x = np.concatenate([z[f"{s}_images"] for s in ("train", "val", "test")]).reshape(-1, 28 * 28 * 3)
    x = x.astype(np.float32) / 255
    x -= x.mean(axis=0)
    vt = np.linalg.svd(x[::4], full_matrices=False)[2]  # a quarter of the rows fixes the axes
    return np.ascontiguousarray(x @ vt[:dim].T, dtype=np.float32)


def _mixture(k: int, rows: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((k // 10, 32)).astype(np.float32) * 4
    x = rng.standard_normal((rows, 32), dtype=np.float32)
    return x + centers[rng.integers(0, len(centers), len(x))]


def _after_lloyd(x: np.ndarray, k: int, method: str, seed: int) -> tuple[float, float]:
    """(inertia after 20 Lloyd iterations, init seconds) from ``method``'s start."""
    from dcssl.cluster import kmeans
    from dcssl.cluster.kmeans import KMeansState, init_centroids, refine_on_sample

    t0 = time.monotonic()
    start = init_centroids(x, k, method=method, seed=seed, refiner=refine_on_sample)
    took = time.monotonic() - t0
    _, _, stats = kmeans(x, k, iterations=20, tol=0.0, state=KMeansState(start), log_every=0)
    return float(stats["inertia"]), took


def _case(x: np.ndarray, name: str, k: int, seeds: int) -> dict:
    from dcssl.cluster.seeding import auto_method

    runs = {m: [_after_lloyd(x, k, m, s) for s in range(seeds)] for m in ("kmeans++", "kmeans||")}
    mean = {m: float(np.mean([r[0] for r in v])) for m, v in runs.items()}
    rel = (mean["kmeans||"] - mean["kmeans++"]) / mean["kmeans++"]
    spread = float(np.std([r[0] for r in runs["kmeans++"]]) / mean["kmeans++"])
    print(
        f"{name} {len(x)} × {x.shape[1]}, k = {k}, {seeds} seeds: inertia after 20 iterations "
        f"k-means++ {mean['kmeans++']:.6g}, k-means|| {mean['kmeans||']:.6g} ({rel:+.3%}; "
        f"k-means++ seed spread {spread:.3%}); init s {np.mean([r[1] for r in runs['kmeans++']]):.2f} "
        f"vs {np.mean([r[1] for r in runs['kmeans||']]):.2f}",
        flush=True,
    )
    return {
        "data": name,
        "n": len(x),
        "d": x.shape[1],
        "k": k,
        "seeds": seeds,
        "auto": auto_method(len(x), k, x.shape[1]),
        "inertia_kmeanspp": mean["kmeans++"],
        "inertia_kmeans_parallel": mean["kmeans||"],
        "rel_diff": float(f"{rel:.3e}"),
        "seed_spread_kmeanspp": float(f"{spread:.3e}"),
    }


def init_quality(npz: Path, seeds: int, threads: int) -> int:
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
    cases = []
    for name, k, size in CASES:
        if name == "blood" and not npz.is_file():
            print(f"skipped blood k = {k}: {npz} not found (pass --npz)", flush=True)
            continue
        cases.append(_case(_blood(npz, size) if name == "blood" else _mixture(k, size), name, k, seeds))
    result = {
        "bench": "kmeans",
        "preset": "init-quality",
        "cases": cases,
        "worst_rel_diff": max(c["rel_diff"] for c in cases),
    }
    print(json.dumps(result))
    return 0
