"""The multi-rank side of ``python -m dcssl.bench kmeans``: spawned under ``mpiexec -n R`` by
``run_ranks``, each rank reads its shard of the bench data, runs (and times) the init and the
Lloyd iterations, and reports its times and peak memory to rank 0."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from hpc.mpi import mpiexec

__all__ = ["run_ranks", "worker", "per_row"]


# Rows per block, the shards' granularity: small enough that 2 ranks get equal shares of the
# 200 k rows (k-means is exact per row, so any block gives the same labels).
_BLOCK = 1024


def _ours(x, init, iters, min_s, backend, comm=None, row0=0) -> tuple[float, np.ndarray, dict]:
    """Seconds per Lloyd iteration — a run's mean, as for faiss (pruning makes later iterations
    cheaper) — median over repeats totalling ≥ min_s; final centroids; the last run's stats."""
    from dcssl.cluster import kmeans
    from dcssl.cluster.kmeans import KMeansState

    per_iter, spent, cent = [], 0.0, None
    while spent < min_s or not per_iter:
        t0 = time.monotonic()
        cent, _, stats = kmeans(
            x,
            len(init),
            comm,
            iterations=iters,
            tol=0.0,
            backend=backend,
            state=KMeansState(init.copy()),
            row0=row0,
            log_every=0,
            block=_BLOCK,
        )
        spent += time.monotonic() - t0
        per_iter.append(float(np.mean(stats["seconds_per_iteration"])))
        if comm is not None:  # every rank must agree on whether to repeat
            spent = comm.allreduce(spent, op=__import__("mpi4py").MPI.MAX)
    return float(np.median(per_iter)), cent, stats


def _rss_mb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def per_row(rank: dict) -> float:
    """Peak growth beyond the fixed part, per MB of shard."""
    return (rank["peak_growth_mb"] - rank["fixed_mb"]) / rank["shard_mb"]


def worker(folder: Path) -> int:
    """One MPI rank of the multi-rank run: read my shard, time iterations, report."""
    from mpi4py import MPI

    from dcssl.cluster import shard_rows

    comm = MPI.COMM_WORLD
    meta = json.loads((folder / "meta.json").read_text())
    n, d = meta["n"], meta["d"]
    from threadpoolctl import threadpool_limits

    threadpool_limits(meta["threads_per_rank"])
    start, stop = shard_rows(n, comm.Get_rank(), comm.Get_size(), _BLOCK)
    # Baseline after the libraries are loaded and BLAS has set up its thread buffers (a fixed
    # cost per process, not per row): import the clustering code, touch sgemm/dgemm once.
    import dcssl.cluster.kmeans  # noqa: F401

    np.ones((256, 256), np.float32) @ np.ones((256, 256), np.float32)
    np.ones((256, 256)) @ np.ones((256, 256))
    if meta["backend"] == "torch":
        import torch

        torch.set_num_threads(meta["threads_per_rank"])
        torch.ones(256, 256) @ torch.ones(256, 256)
    base = _rss_mb()
    x = np.fromfile(
        folder / "x.f32", dtype=np.float32, count=(stop - start) * d, offset=start * d * 4
    ).reshape(-1, d)
    init_s = 0.0
    if (
        meta["init"] == "kmeans||" and not (folder / "init.npy").exists()
    ):  # the init under test: timed on the ranks, then shared
        from dcssl.cluster.kmeans import init_centroids, refine_on_sample

        t0 = time.monotonic()
        init = init_centroids(
            x, meta["k"], comm, method="kmeans||", seed=0, row0=start, refiner=refine_on_sample
        )
        init_s = time.monotonic() - t0
        if comm.Get_rank() == 0:
            np.save(folder / "init.npy", init)
    else:
        init = np.load(folder / "init.npy")
    # The part of the peak that does not grow with the rows (score buffers, k×d sums, MPI): a
    # short run with the same k and d on a few rows, whose own data is subtracted.
    small = np.random.default_rng(9).standard_normal((2 * len(init), d)).astype(np.float32)
    _ours(small, init, 2, 0.0, meta["backend"], comm, comm.Get_rank() * len(small))
    fixed = max(_peak_mb() - base - small.nbytes / 2**20 - x.nbytes / 2**20, 0.0)
    del small
    s_iter, cent, stats = _ours(x, init, meta["iters"], meta["min_s"], meta["backend"], comm, start)
    grown = _peak_mb() - base
    report = comm.gather(
        {
            "rank": comm.Get_rank(),
            "shard_mb": x.nbytes / 2**20,
            "peak_growth_mb": grown,
            "fixed_mb": fixed,
            "s_per_iter": s_iter,
            "seconds_per_iteration": stats["seconds_per_iteration"],
            "rescanned": stats["rescanned_fraction_per_iteration"],
            "init_s": init_s,
            "inertia": stats["inertia"],
        },
        root=0,
    )
    if comm.Get_rank() == 0:
        np.save(folder / "centroids_ranks.npy", cent)
        (folder / "ranks.json").write_text(json.dumps(report))
    return 0


def run_ranks(args, x, init, folder: Path) -> tuple[list[dict], np.ndarray, np.ndarray]:
    """The multi-rank run (``mpiexec``, spawned here) → (per-rank reports, centroids, init)."""
    x.tofile(folder / "x.f32")
    if init is not None:
        np.save(folder / "init.npy", init)
    per_rank = max(1, args.threads // args.ranks)
    meta = {
        "n": len(x),
        "d": args.d,
        "k": args.k,
        "iters": args.iters,
        "min_s": args.min_seconds,
        "backend": args.backend,
        "threads_per_rank": per_rank,
        "init": args.init,
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    env = {
        **os.environ,
        **{v: str(per_rank) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
    }
    cmd = [mpiexec(), "-n", str(args.ranks), sys.executable, "-m", "dcssl.bench._kmeans_ranks", str(folder)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    ranks = json.loads((folder / "ranks.json").read_text())
    return ranks, np.load(folder / "centroids_ranks.npy"), np.load(folder / "init.npy")


if __name__ == "__main__":
    sys.exit(worker(Path(sys.argv[1])))
