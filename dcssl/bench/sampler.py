"""``python -m dcssl.bench sampler``: one rank's epoch plan, per-rank vs the global plan it replaced.

Every rank of a DDP job plans its epoch at the start of each epoch. The baseline is the plan every
rank used to build — the whole epoch's list over all N tiles (argsort, shuffle, first-occurrence
scan), of which a rank keeps 1/W; the project's plan computes only the rank's own positions (see
``dcssl.train.sampler``). Each plan runs in a fresh process over the same labels (uniform random
over k clusters), so its peak RSS above the labels is measured alone. Seconds are the process's
CPU seconds (one thread: they do not move when other jobs share the machine), wall seconds beside.
The last line is one JSON object with plan seconds and peak RSS per rank and the ratios to the
global plan.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np

__all__ = ["main", "global_plan"]


def global_plan(labels: np.ndarray, seed: int, epoch: int, rank: int, world: int) -> np.ndarray:
    """The baseline: the sampler before per-rank plans (the global list, then this rank's share)."""
    from dcssl.train.augment import mix_seed

    valid = np.flatnonzero(labels >= 0)
    rng = np.random.default_rng(mix_seed(seed, epoch, 0x5A3))
    shuffled = valid[rng.permutation(valid.size)]
    members = shuffled[np.argsort(labels[shuffled], kind="stable")]
    _, starts, counts = np.unique(labels[members], return_index=True, return_counts=True)
    n = int(valid.size)
    quota = -(-n // len(counts))
    take = np.minimum(counts, quota)
    ends = np.cumsum(take)
    first = np.repeat(starts, take) + np.arange(ends[-1]) - np.repeat(ends - take, take)
    extra = quota - take
    pad_cluster = np.repeat(np.arange(len(counts)), extra)
    pad = starts[pad_cluster] + (rng.random(pad_cluster.size) * counts[pad_cluster]).astype(np.int64)
    order = members[np.concatenate([first, pad])]
    rng.shuffle(order)
    order = order[:n]
    positions = np.arange(order.size, dtype=np.int64)
    first_at = np.full(labels.size, order.size, dtype=np.int64)
    np.minimum.at(first_at, order, positions)
    owners = first_at[order] == positions
    return order[rank::world][: n // world], owners[rank::world][: n // world]


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _one(args: argparse.Namespace) -> dict:
    """Plan one rank in this process: seconds and peak RSS above the labels."""
    from dcssl.train.sampler import UniformClusterSampler

    labels = np.random.default_rng(args.seed).integers(0, args.k, args.n, dtype=np.int32)
    before = _peak_mb()
    start, cpu = time.perf_counter(), time.process_time()
    if args.worker == "global":
        tiles = global_plan(labels, args.seed, 1, 0, args.world)[0]
    else:
        sampler = UniformClusterSampler(
            labels,
            rank=int(args.worker),
            world_size=args.world,
            seed=args.seed,
            shard_offsets=np.linspace(0, args.n, args.shards + 1).astype(np.int64),
            shard_window=args.window,
        )
        sampler.set_epoch(1)
        tiles = sampler.plan()[0]
    return {
        "cpu_s": round(time.process_time() - cpu, 3),
        "wall_s": round(time.perf_counter() - start, 3),
        "peak_mb": round(_peak_mb() - before, 1),
        "draws": int(tiles.size),
    }


def _spawn(args: argparse.Namespace, worker: str) -> dict:
    command = [sys.executable, "-m", "dcssl.bench", "sampler", "--worker", worker]
    command += ["--n", str(args.n), "--k", str(args.k), "--world", str(args.world), "--seed", str(args.seed)]
    command += ["--shards", str(args.shards), "--window", str(args.window)]
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dcssl.bench sampler", description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=30_000_000, help="labelled tiles")
    p.add_argument("--k", type=int, default=10_000, help="clusters")
    p.add_argument("--world", type=int, default=8, help="DDP ranks")
    p.add_argument("--ranks", type=int, default=0, help="ranks to plan (default: all of --world)")
    p.add_argument("--shards", type=int, default=11_000, help="store shards (for the shard windows)")
    p.add_argument("--window", type=int, default=128, help="train.data.shard_window (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if min(args.n, args.k, args.world, args.shards) < 1 or args.k > args.n or args.window < 0:
        print("error: --n, --k, --world and --shards must be ≥ 1, --k ≤ --n, --window ≥ 0", file=sys.stderr)
        return 2
    if args.worker:
        print(json.dumps(_one(args)))
        return 0
    ranks = range(args.ranks or args.world)
    per_rank = []
    for rank in ranks:
        per_rank.append(_spawn(args, str(rank)))
        print(f"rank {rank}/{args.world}: {per_rank[-1]}", flush=True)
    baseline = _spawn(args, "global")
    print(f"global plan (every rank, before): {baseline}", flush=True)
    worst = max(r["cpu_s"] for r in per_rank)
    result = {
        "bench": "sampler",
        "n": args.n,
        "k": args.k,
        "world": args.world,
        "shards": args.shards,
        "shard_window": args.window,
        "plan_cpu_s_per_rank": [r["cpu_s"] for r in per_rank],
        "plan_wall_s_per_rank": [r["wall_s"] for r in per_rank],
        "peak_rss_mb_per_rank": [r["peak_mb"] for r in per_rank],
        "global_plan_cpu_s": baseline["cpu_s"],
        "global_plan_wall_s": baseline["wall_s"],
        "global_peak_rss_mb": baseline["peak_mb"],
        "speedup_vs_global": round(baseline["cpu_s"] / max(worst, 1e-9), 2),
        "memory_ratio_vs_global": round(
            max(r["peak_mb"] for r in per_rank) / max(baseline["peak_mb"], 1e-9), 3
        ),
    }
    print(json.dumps(result))
    return 0
