"""``python -m dcssl.bench kmeans``: this job's Lloyd iteration (1 and 2 MPI ranks) vs faiss.Kmeans.

Identical data (a Gaussian mixture), identical initial centroids, identical threads (faiss and the
1-rank run: ``--threads`` in this process; the 2-rank run: ``mpiexec -n 2`` with threads/2 each,
spawned here). Reports seconds per iteration, achieved GFLOP/s (2·n·k·d per iteration) against a
measured sgemm peak, the final inertia of each (recomputed the same way; also from a k-means++
start, where clusters rarely empty and both run the same iterations) and each rank's peak
memory beyond its baseline next to its shard size — split into the part that does not grow with
the rows (measured by a short run with the same k and d) and the rest. Seconds per iteration are
a run's mean (pruning makes later iterations cheaper). Last line: one JSON object.

``--preset deepcluster`` is DeepCluster's setting (1 M × 256, k = 10,000, 20 iterations) on a
1,000-component mixture, started from this job's k-means|| (timed on the ranks: ``init_s``);
``--faiss-iters`` / ``--check-rows`` shorten faiss's timing and the 1-rank checks when the whole
run does not fit the time at hand (the JSON says what was run). ``--preset init-quality``: the
inertia after 20 iterations from k-means|| vs k-means++ (``_kmeans_init``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dcssl.bench._kmeans_init import init_quality
from dcssl.bench._kmeans_ranks import _BLOCK, _ours, per_row, run_ranks
from dcssl.cluster.seeding import auto_method

__all__ = ["main"]


def _mixture(n: int, d: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d)).astype(np.float32) * 4
    x = rng.standard_normal((n, d), dtype=np.float32)
    x += centers[rng.integers(0, k, n)]
    return x


def _inertia(x: np.ndarray, centroids: np.ndarray) -> float:
    from dcssl.cluster import assign

    return float(assign(x, centroids)[1].sum(dtype=np.float64))


def _faiss(x, init, iters, min_s, threads) -> tuple[float, np.ndarray]:
    import faiss

    faiss.omp_set_num_threads(threads)
    runs, spent, cent = [], 0.0, None
    while spent < min_s or not runs:
        km = faiss.Kmeans(
            x.shape[1],
            len(init),
            niter=iters,
            seed=1,
            verbose=False,
            max_points_per_centroid=len(x),
            min_points_per_centroid=1,
        )
        t0 = time.monotonic()
        km.train(x, init_centroids=init)
        took = time.monotonic() - t0
        spent += took
        runs.append(took / iters)
        cent = km.centroids
    return float(np.median(runs)), cent


def _parity(x, k, iters, threads, backend) -> tuple[float, int]:
    """The same comparison from one k-means++ start, where clusters rarely empty: there both run
    the same Lloyd iterations, so the inertias should agree. → (relative difference, clusters
    this job split)."""
    from dcssl.cluster import kmeans
    from dcssl.cluster.kmeans import KMeansState, init_centroids, refine_on_sample

    start = init_centroids(x, k, method="kmeans++", seed=0, trials=1, refine=0, refiner=refine_on_sample)
    _, c_faiss = _faiss(x, start, iters, 0.0, threads)
    cent, _, stats = kmeans(
        x,
        k,
        iterations=iters,
        tol=0.0,
        backend=backend,
        log_every=0,
        state=KMeansState(start.copy()),
        block=_BLOCK,
    )
    ours, theirs = _inertia(x, cent), _inertia(x, c_faiss)
    return (ours - theirs) / theirs, stats["empty_split"]


def _sgemm_peak(threads: int, min_s: float) -> float:
    """Best float32 GFLOP/s of a 4096² matrix product (numpy/OpenBLAS, and torch/MKL if installed)."""
    an = np.random.default_rng(0).standard_normal((4096, 4096), dtype=np.float32)
    products = [lambda: an @ an]
    try:
        import torch

        torch.set_num_threads(threads)
        a = torch.from_numpy(an)
        products.append(lambda: a @ a)
    except ImportError:  # the numpy figure alone
        pass
    best, spent = 0.0, 0.0
    flop = 2 * 4096**3
    while spent < min_s:
        for fn in products:
            t0 = time.monotonic()
            fn()
            took = time.monotonic() - t0
            spent += took
            best = max(best, flop / took / 1e9)
    return best


# name → (rows, dimension, k, iterations, mixture components (0: k), init, seconds per figure).
# deepcluster: DeepCluster's setting (d = 256, k = 10,000, 20 iterations) on 1 M rows of a
# 1,000-component mixture — k over-clusters the structure ten-fold, as DeepCluster's k does on
# ImageNet, which is where single-bound pruning stops working; the start is this job's k-means||.
PRESETS = {
    "small": (200_000, 128, 1000, 10, 0, "random", 5.0),
    "deepcluster": (1_000_000, 256, 10_000, 20, 1000, "kmeans||", 0.0),
}


def _args(argv):
    p = argparse.ArgumentParser(prog="python -m dcssl.bench kmeans", description=__doc__.split("\n")[0])
    p.add_argument(
        "--preset",
        choices=[*sorted(PRESETS), "init-quality"],
        default="small",
        help="sizes (options below win); init-quality: k-means|| vs k-means++ after 20 iterations",
    )
    p.add_argument("--n", type=int, help="rows")
    p.add_argument("--d", type=int, help="dimension")
    p.add_argument("--k", type=int, help="clusters")
    p.add_argument("--iters", type=int, help="Lloyd iterations per run")
    p.add_argument("--components", type=int, help="Gaussian mixture components of the data (0: k)")
    p.add_argument("--init", choices=["random", "kmeans||"], help="the shared start")
    p.add_argument(
        "--threads",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="cores for faiss and the 1-rank run (the ranks share them)",
    )
    p.add_argument("--ranks", type=int, default=2, help="MPI ranks of the multi-rank run")
    p.add_argument("--backend", default="numpy", choices=["numpy", "torch"])
    p.add_argument("--min-seconds", type=float, help="work per measured figure")
    p.add_argument(
        "--faiss-iters",
        type=int,
        help="iterations faiss is timed over (default: --iters; its iterations all cost the same)",
    )
    p.add_argument(
        "--check-rows",
        type=int,
        help="rows of the 1-rank identity and same-start inertia checks (default: all)",
    )
    p.add_argument(
        "--npz", type=Path, default=Path("tests/data/bloodmnist.npz"), help="init-quality: BloodMNIST"
    )
    p.add_argument("--seeds", type=int, default=4, help="init-quality: seeds per case")
    args = p.parse_args(argv)
    if args.preset == "init-quality":
        return args
    names = ("n", "d", "k", "iters", "components", "init", "min_seconds")
    for name, value in zip(names, PRESETS[args.preset], strict=True):
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.components = args.components or args.k
    args.faiss_iters = args.faiss_iters or args.iters
    args.check_rows = min(args.check_rows or args.n, args.n)
    return args


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.preset == "init-quality":
        return init_quality(args.npz, args.seeds, args.threads)
    from threadpoolctl import threadpool_limits

    threadpool_limits(args.threads)
    x = _mixture(args.n, args.d, args.components, 0)
    init = None
    if args.init == "random":
        init = x[np.random.default_rng(1).choice(args.n, args.k, replace=False)].copy()
    flop = 2.0 * args.n * args.k * args.d
    print(
        f"data: {args.n} × {args.d} float32 ({args.components}-component mixture), k = {args.k}, "
        f"{args.iters} iterations per run, {args.threads} threads, start: {args.init}",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="bench-kmeans-") as tmp:
        try:
            ranks, c_ranks, init = run_ranks(args, x, init, Path(tmp))
        except RuntimeError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    s_two = max(r["s_per_iter"] for r in ranks)
    init_s = max(r["init_s"] for r in ranks)
    if args.init != "random":
        print(f"init {args.init} on {args.ranks} ranks: {init_s:.1f} s", flush=True)
    secs = np.max([r["seconds_per_iteration"] for r in ranks], axis=0)
    print("per iteration (s):", " ".join(f"{v:.2f}" for v in secs), flush=True)
    print("rows rescanned (share, rank 0):", " ".join(f"{v:.3f}" for v in ranks[0]["rescanned"]), flush=True)
    kd_mb = args.k * args.d * 4 / 2**20
    for r in ranks:
        print(
            f"rank {r['rank']}: shard {r['shard_mb']:.1f} MB, peak memory growth "
            f"{r['peak_growth_mb']:.1f} MB ({r['peak_growth_mb'] / r['shard_mb']:.2f}× shard); "
            f"of which {r['fixed_mb']:.1f} MB do not grow with the rows (k·d float32 = "
            f"{kd_mb:.2f} MB): {per_row(r):.2f}× shard + that",
            flush=True,
        )
    peak = _sgemm_peak(args.threads, max(args.min_seconds, 1.0))
    print(f"sgemm peak (4096², float32): {peak:.1f} GFLOP/s", flush=True)
    s_faiss, c_faiss = _faiss(x, init, args.faiss_iters, args.min_seconds, args.threads)
    print(
        f"faiss.Kmeans:   {s_faiss:.3f} s/iter  {flop / s_faiss / 1e9:6.1f} GFLOP/s "
        f"(over {args.faiss_iters} iterations)",
        flush=True,
    )
    print(
        f"dcssl {args.ranks} ranks:  {s_two:.3f} s/iter  {flop / s_two / 1e9:6.1f} GFLOP/s  "
        f"({s_faiss / s_two:.2f}× faiss)",
        flush=True,
    )
    m = args.check_rows
    if m < args.n:  # the checks on the first m rows: a second multi-rank run, faiss, 1 rank
        print(f"checks on the first {m} rows:", flush=True)
        with tempfile.TemporaryDirectory(prefix="bench-kmeans-") as tmp:
            _, c_ranks, _ = run_ranks(args, x[:m], init, Path(tmp))
        _, c_faiss = _faiss(x[:m], init, args.iters, 0.0, args.threads)
    elif args.faiss_iters != args.iters:
        c_faiss = None
    s_one, c_one, _ = _ours(x[:m], init, args.iters, args.min_seconds if m == args.n else 0.0, args.backend)
    if m == args.n:
        print(
            f"dcssl 1 rank:   {s_one:.3f} s/iter  {flop / s_one / 1e9:6.1f} GFLOP/s  "
            f"({s_faiss / s_one:.2f}× faiss)",
            flush=True,
        )
    identical = bool(np.array_equal(c_one, c_ranks))
    inertia = {"ranks": _inertia(x[:m], c_ranks)}
    inertia["faiss"] = _inertia(x[:m], c_faiss) if c_faiss is not None else float("nan")
    inertia["one"] = inertia["ranks"] if identical else _inertia(x[:m], c_one)
    # Signed: negative means lower (better) inertia than faiss. The runs share their start;
    # they part ways when a cluster empties (faiss splits a random cluster, this job the largest).
    rel = (inertia["ranks"] - inertia["faiss"]) / inertia["faiss"]
    print(
        f"final inertia ({m} rows): faiss {inertia['faiss']:.6g}, 1 rank {inertia['one']:.6g}, "
        f"{args.ranks} ranks {inertia['ranks']:.6g} ({rel:+.2%} vs faiss); 1 rank and "
        f"{args.ranks} ranks identical centroids: {identical}",
        flush=True,
    )
    parity, split = float("nan"), None
    if auto_method(args.n, args.k, args.d, trials=1) == "kmeans++":  # beyond: k-means++ takes hours
        parity, split = _parity(x, args.k, args.iters, args.threads, args.backend)
        print(f"from a k-means++ start: inertia {parity:+.3%} vs faiss ({split} clusters split here)")
    worst = max(ranks, key=lambda r: r["peak_growth_mb"] / r["shard_mb"])
    result = {
        "bench": "kmeans",
        "preset": args.preset,
        "components": args.components,
        "init": args.init,
        "init_s": round(init_s, 2),
        "seconds_per_iteration_2ranks": [round(v, 3) for v in secs],
        "rescanned_per_iteration": ranks[0]["rescanned"],
        "n": args.n,
        "d": args.d,
        "k": args.k,
        "iters": args.iters,
        "threads": args.threads,
        "ranks": args.ranks,
        "backend": args.backend,
        "s_per_iter_1rank": round(s_one, 4) if m == args.n else None,
        "s_per_iter_2ranks": round(s_two, 4),
        "s_per_iter_faiss": round(s_faiss, 4),
        "speedup_vs_faiss": round(s_faiss / s_two, 3),
        "speedup_vs_faiss_1rank": round(s_faiss / s_one, 3) if m == args.n else None,
        "gflops_1rank": round(flop / s_one / 1e9, 1) if m == args.n else None,
        "gflops_2ranks": round(flop / s_two / 1e9, 1),
        "gflops_faiss": round(flop / s_faiss / 1e9, 1),
        "sgemm_peak_gflops": round(peak, 1),
        "sgemm_fraction": round(flop / s_two / 1e9 / peak, 3),
        "inertia_faiss": inertia["faiss"],
        "inertia_1rank": inertia["one"],
        "inertia_2ranks": inertia["ranks"],
        "inertia_rel_diff": float(f"{rel:.3e}") if np.isfinite(rel) else None,
        "faiss_iters": args.faiss_iters,
        "check_rows": m,
        "inertia_rel_diff_kmeanspp": None if split is None else float(f"{parity:.3e}"),
        "empty_split_kmeanspp": split,
        "identical_1_vs_ranks": identical,
        "peak_rss_mb_per_rank": round(worst["peak_growth_mb"], 1),
        "shard_mb_per_rank": round(worst["shard_mb"], 1),
        "rss_over_shard": round(worst["peak_growth_mb"] / worst["shard_mb"], 3),
        "fixed_mb_per_rank": round(worst["fixed_mb"], 1),
        "rss_over_shard_beyond_fixed": round(max(per_row(r) for r in ranks), 3),
        "kd_mb": round(kd_mb, 2),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
