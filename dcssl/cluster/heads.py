"""Several clustering heads (DeepCluster-v2 / SwAV style): besides ``cluster.k``, one k-means
per ``cluster.extra_k`` on the same PCA-whitened rows, each with its own seed and checkpoints, so
a preempted job resumes inside any head and every head's labels are those of an uninterrupted
run with any rank count (k-means is exact per row)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from hpc.preemption import PreemptionFlag

from .config import ClusterConfig
from .kmeans import kmeans
from .resume import Checkpointer, fingerprint, init_from, kmeans_from, load_resume
from .store import checkpoints

__all__ = ["HEAD_SEED_STRIDE", "HeadResult", "run_kmeans", "cluster_extra_heads"]

HEAD_SEED_STRIDE = 100_003
"""Extra head h draws its init from seed + h × this (a prime, so no head shares another's seed
or another epoch's: epochs add 1 to the seed)."""

_HEAD_STATS = ("k", "iterations", "inertia", "empty_split", "sizes", "clusters_used", "largest_share")


@dataclass
class HeadResult:
    centroids: np.ndarray
    """k × pca_dim float32."""
    labels: np.ndarray
    """This rank's rows' labels, excluded rows -1."""
    stats: dict
    """What stats.json records under "heads"."""


def run_kmeans(x, k: int, cfg: ClusterConfig, seed: int, comm, saver: Checkpointer, resume, **where):
    """The job's k-means of ``x`` into ``k`` clusters, resumed from ``resume`` (or started)."""
    return kmeans(
        x,
        k,
        comm,
        iterations=cfg.iterations,
        tol=cfg.tol,
        init=cfg.init,
        init_sample=cfg.init_sample,
        init_trials=cfg.init_trials,
        init_refine=cfg.init_refine,
        seed=seed,
        state=kmeans_from(resume) if resume and "centroids" in resume else None,
        on_iteration=saver,
        groups=cfg.groups,
        init_resume=init_from(resume),
        on_init_round=saver.init_round,
        **where,
    )


def cluster_extra_heads(
    x,
    cfg: ClusterConfig,
    seed: int,
    kept,
    run_dir: Path,
    epoch: int,
    comm,
    flag: PreemptionFlag,
    dim: int,
    **where,
) -> list[HeadResult]:
    """k-means of ``x`` for each of ``cfg.extra_k`` (head 1, 2, …), checkpointed per head."""
    results = []
    for head, k in enumerate(cfg.extra_k, 1):
        head_seed = seed + HEAD_SEED_STRIDE * head
        agreed = {**fingerprint(replace(cfg, k=k), kept.n, dim, head_seed), "head": head}
        ckpt = checkpoints(run_dir, epoch, cfg.keep_checkpoints, head=head)
        resume = load_resume(ckpt, agreed, comm)
        saver = Checkpointer(cfg, ckpt, {"fingerprint": agreed}, None, comm, flag)
        centroids, labels, stats = run_kmeans(
            x, k, cfg, head_seed, comm, saver, resume, row0=kept.row0, **where
        )
        head_stats = {key: stats[key] for key in _HEAD_STATS} | {"seed": head_seed}
        results.append(HeadResult(centroids, kept.expand(labels), head_stats))
    return results
