"""``bench quality --seeds 0,1``: the same race on several seeds, summarised as mean and spread.

One run on a 500-tile test set is noisy (a k-NN accuracy there has a standard error of ≈ 2 points,
and the random-init baseline itself moves with the seed), so a claim rests on several seeds: each
seed trains DeepCluster, the random-init baseline and every peer with ``train.seed`` and
``cluster.seed`` set to it, in its own run directory, and the summary line gives, per figure, the
mean and the (min, max) over seeds. ``knn_vs_best_peer`` is summarised twice: per seed (mean and
spread of the per-seed ratios) and as the ratio of means (DeepCluster's mean k-NN over the best
peer's mean k-NN), the one the target is read from. Label-fraction probes are averaged too.
"""

from __future__ import annotations

import statistics
from pathlib import Path

__all__ = ["SUMMARISED", "parse_seeds", "seed_overrides", "seed_run_dir", "summarise"]

SUMMARISED = (
    "knn_pretrained",
    "knn_random",
    "knn_raw_pixels",
    "linear_pretrained",
    "linear_random",
    "knn_gain_points",
    "knn_vs_best_peer",
)
"""Per-seed figures the summary gives mean and spread of (those a line has)."""


def parse_seeds(text: str) -> list[int]:
    """``"0,1"`` → [0, 1]; ValueError naming the problem for anything else."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds {text}: give comma-separated integers, e.g. --seeds 0,1") from None
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise ValueError(f"--seeds {text}: seeds must be distinct and ≥ 0")
    return seeds


def seed_overrides(seed: int) -> list[str]:
    """The overrides that put a whole race (loop, k-means, random init, peers) on ``seed``."""
    return [f"train.seed={seed}", f"cluster.seed={seed}"]


def seed_run_dir(root: Path, seed: int) -> Path:
    return root / f"seed-{seed}"


def _spread(values: list[float]) -> dict:
    return {
        "mean": round(statistics.fmean(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def _mean_fractions(per_seed: list[dict]) -> dict:
    """{"encoder@fraction": [k-NN, linear or None]} per seed → the same keys with the means."""
    means = {}
    for key, first in per_seed[0].items():
        pairs = [fractions[key] for fractions in per_seed]
        means[key] = [
            None if first[i] is None else round(statistics.fmean(p[i] for p in pairs), 4) for i in range(2)
        ]
    return means


def summarise(lines: list[dict]) -> dict:
    """One setting's per-seed lines (each with ``seed``) → {figure: {mean, min, max}} and the ratio
    of means against the best peer by mean k-NN."""
    summary: dict = {"setting": lines[0]["setting"], "seeds": [line["seed"] for line in lines]}
    for key in SUMMARISED:
        if all(key in line for line in lines):
            summary[key] = _spread([float(line[key]) for line in lines])
    summary["cpu_minutes_deepcluster"] = _spread([line["cpu_minutes"]["deepcluster"] for line in lines])
    if all("label_fractions" in line for line in lines):
        summary["label_fractions_mean"] = _mean_fractions([line["label_fractions"] for line in lines])
    peers = lines[0].get("peers_knn", {})
    if peers:
        summary["peers_knn"] = {m: _spread([line["peers_knn"][m] for line in lines]) for m in peers}
        best = max(peers, key=lambda m: summary["peers_knn"][m]["mean"])
        summary["best_peer_by_mean"] = best
        ratio = summary["knn_pretrained"]["mean"] / max(summary["peers_knn"][best]["mean"], 1e-9)
        summary["knn_vs_best_peer_of_means"] = round(ratio, 4)
    return summary
