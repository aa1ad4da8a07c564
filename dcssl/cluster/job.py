"""One epoch's cluster job: features[e] → PCA-whiten → k-means or RCC → labels[e] + stats.

Runs with any number of MPI ranks (``srun --mpi=pmi2 -n R``, ``mpiexec -n R`` or alone), each
rank on a contiguous, block-aligned row range. Rank 0 checkpoints after every iteration; a re-run
(same or different R) resumes there and produces exactly the labels of an uninterrupted run. A
finished epoch (its labels complete) is a no-op.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np

from dcssl.epochs.features import open_features
from dcssl.epochs.labels import LabelsWriter, is_complete, labels_dir, read_labels_range, read_stats
from dcssl.jsonl import append_jsonl
from dcssl.paths import RunPaths
from hpc.preemption import PreemptionFlag

from .config import ClusterConfig
from .exact import broadcast, gather_rows, global_max, shard_rows
from .excluded import kept_rows
from .heads import cluster_extra_heads, run_kmeans
from .health import label_warnings
from .kmeans import assign_all, sample_index
from .nmi import nmi
from .pca import PCA, pca_fit, pca_transform
from .resume import Checkpointer, fingerprint, init_from, load_resume
from .store import checkpoints

__all__ = ["run_cluster"]

log = logging.getLogger(__name__)


def _node_ranks(comm) -> int:
    try:
        from mpi4py import MPI

        return comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()
    except Exception:  # not an MPI communicator (SingleComm): one rank here
        return 1


def _set_threads(cfg: ClusterConfig, comm) -> int:
    """BLAS threads: this rank's share of the cores (SLURM_CPUS_PER_TASK when set)."""
    threads = cfg.threads
    if not threads:
        per_task = os.environ.get("SLURM_CPUS_PER_TASK")
        cores = int(per_task) if per_task else len(os.sched_getaffinity(0)) // _node_ranks(comm)
        threads = max(1, cores)
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
    if cfg.backend in ("torch", "cuda"):
        import torch

        torch.set_num_threads(threads)
    return threads


def _backend(cfg: ClusterConfig, comm) -> str:
    if cfg.backend != "auto":
        if cfg.backend == "cuda":
            _pick_gpu(comm)
        return cfg.backend
    if not os.path.exists("/dev/nvidiactl"):
        return "numpy"  # no GPU on this node: don't pay for importing torch
    import torch

    if torch.cuda.is_available():
        _pick_gpu(comm)
        return "cuda"
    return "numpy"


def _pick_gpu(comm) -> None:
    import torch

    from hpc.env import detect_env

    torch.cuda.set_device(detect_env().local_rank % max(torch.cuda.device_count(), 1))


def run_cluster(run_dir: Path, epoch: int, cfg: ClusterConfig, comm=None) -> dict:
    """Cluster epoch ``epoch``'s features into labels; returns the stats (also in stats.json)."""
    if comm is None:
        from hpc.mpi import world

        comm = world()
    run_dir, rank, size = Path(run_dir), comm.Get_rank(), comm.Get_size()
    if is_complete(run_dir, epoch):
        log.info("epoch %d: labels already complete in %s, nothing to do", epoch, labels_dir(run_dir, epoch))
        return read_stats(run_dir, epoch)
    t_start, phases = time.monotonic(), {}
    bank = open_features(run_dir, epoch)
    threads, backend = _set_threads(cfg, comm), _backend(cfg, comm)
    seed = cfg.seed + (epoch if cfg.seed_per_epoch else 0)
    block = cfg.block_rows
    start, stop = shard_rows(bank.n, rank, size, block)
    kept = kept_rows(run_dir, bank.n, start, stop, comm)  # excluded tiles take no part
    agreed = fingerprint(cfg, kept.n, bank.dim, seed)
    ckpt = checkpoints(run_dir, epoch, cfg.keep_checkpoints)
    resume = load_resume(ckpt, agreed, comm)
    if rank == 0:
        log.info(
            "epoch %d: %d × %d features, %d ranks × %d threads, %s backend, rank 0 rows [%d, %d)%s",
            epoch,
            bank.n,
            bank.dim,
            size,
            threads,
            backend,
            start,
            stop,
            f", resuming after iteration {resume['meta'].get('iteration', 0)}" if resume else "",
        )
    t0 = time.monotonic()
    raw = kept.take(bank.rows(start, stop))
    pca = _fit_pca(raw, cfg, resume, comm, block)
    phases["pca_fit"] = time.monotonic() - t0
    t0 = time.monotonic()
    x = pca_transform(raw, pca, l2_normalize=cfg.l2_normalize, block=block)
    del raw
    phases["transform"] = time.monotonic() - t0
    flag = PreemptionFlag().install()
    saver = Checkpointer(cfg, ckpt, {"fingerprint": agreed}, pca, comm, flag)
    t0 = time.monotonic()
    if cfg.method == "kmeans":
        where = {"block": block, "backend": backend}
        centroids, labels, stats = run_kmeans(
            x, cfg.k, cfg, seed, comm, saver, resume, row0=kept.row0, **where
        )
        extra = cluster_extra_heads(x, cfg, seed, kept, run_dir, epoch, comm, flag, bank.dim, **where)
        phases["init"] = stats.pop("seconds_init")
        phases["kmeans"] = time.monotonic() - t0 - phases["init"]
    else:
        centroids, labels, stats = _run_rcc(
            x, cfg, seed, kept.n, kept.row0, resume, saver, comm, block, backend
        )
        phases["rcc"] = time.monotonic() - t0
    t0 = time.monotonic()
    labels = kept.expand(labels)
    prev = read_labels_range(run_dir, epoch - 1, bank.n, start, stop)
    missing = global_max(float(prev is None), comm)[0] > 0  # every rank must have its rows
    both = (prev >= 0) & (labels >= 0) if not missing else None  # NMI over tiles labelled twice
    nmi_prev = None if missing else nmi(prev[both], labels[both], comm)
    phases["nmi"] = time.monotonic() - t0
    t0 = time.monotonic()
    extra = extra if cfg.method == "kmeans" else []
    writer = LabelsWriter(run_dir, epoch, bank.n, comm, heads=len(extra))
    writer.begin()
    for head, head_labels in enumerate([labels, *(h.labels for h in extra)]):
        writer.write_rows(start, head_labels, head)
    stats.update(
        epoch=epoch,
        method=cfg.method,
        nmi_prev=nmi_prev,
        ranks=size,
        threads=threads,
        backend=backend,
        seed=seed,
        block_rows=block,
        excluded=bank.n - kept.n,
        pca_explained=pca.explained if pca is not None else None,
        resumed_from=int(resume["meta"].get("iteration", 0)) if resume else None,
        init_resumed_after_round=init_from(resume)["init_round"] if init_from(resume) else None,
        warnings=label_warnings(stats["sizes"], kept.n, cfg.warn_largest_share, cfg.warn_clusters_fraction),
    )
    phases["write"] = time.monotonic() - t0
    phases["total"] = time.monotonic() - t_start
    stats["seconds"] = {k: round(v, 3) for k, v in phases.items()}
    if extra:  # a one-head run's stats stay as they always were
        stats["heads"] = [h.stats for h in extra]
    writer.publish(centroids, stats, [h.centroids for h in extra])
    if rank == 0:
        _finish(run_dir, epoch, cfg, ckpt, stats)
    return stats


def _fit_pca(raw, cfg: ClusterConfig, resume, comm, block) -> PCA | None:
    if cfg.pca_dim == 0:
        return None
    if resume is not None and "pca_proj" in resume:
        return PCA.from_state(resume)
    whiten = cfg.whiten and cfg.method == "kmeans"  # RCC reads distances: never whitened
    pca = pca_fit(raw, cfg.pca_dim, comm, whiten=whiten, block=block)
    if comm.Get_rank() == 0:
        log.info(
            "PCA %d → %d%s keeps %.1f%% of the variance",
            raw.shape[1],
            pca.proj.shape[1],
            " (whitened)" if whiten else " (not whitened)",
            100 * pca.explained,
        )
    return pca


def _run_rcc(x, cfg: ClusterConfig, seed, n, start, resume, saver, comm, block, backend):
    """RCC on a global sample (rank 0), then every row → nearest cluster mean (sharded)."""
    from .rcc import rcc

    t0 = time.monotonic()
    if resume is not None and "rcc_centroids" in resume:
        centroids = np.asarray(resume["rcc_centroids"], dtype=np.float32)
        info = resume["meta"]["rcc"]
    else:
        index = sample_index(n, cfg.rcc.sample or n, seed, 5)
        rows = gather_rows(x, start, start + len(x), index, comm, root=0)
        shape = np.zeros(2, dtype=np.int64)
        if comm.Get_rank() == 0:
            labels_s, info = rcc(
                rows,
                knn=cfg.rcc.knn,
                dim=cfg.rcc.dim,
                iterations=cfg.rcc.iterations,
                mu_every=cfg.rcc.mu_every,
                tol=cfg.rcc.tol,
                cg_tol=cfg.rcc.cg_tol,
                cg_iterations=cfg.rcc.cg_iterations,
                seed=seed,
            )
            centroids = _cluster_means(rows, labels_s, cfg.rcc.min_size)
            shape[:] = centroids.shape
        else:
            info = None
        broadcast(shape, comm)
        if comm.Get_rank() != 0:
            centroids = np.zeros(tuple(shape), dtype=np.float32)
        centroids = broadcast(centroids, comm)
        info = comm.bcast(info, root=0)
        saver.save({"rcc_centroids": centroids, "meta": {"rcc": info}}, 0)
    seconds_rcc = time.monotonic() - t0
    labels, counts, inertia = assign_all(x, centroids, comm, block=block, backend=backend)
    stats = {
        "k": len(centroids),
        "n": n,
        "dim": x.shape[1],
        "iterations": info["iterations"],
        "inertia": inertia,
        "empty_split": 0,
        "sizes": counts.tolist(),
        "clusters_used": int((counts > 0).sum()),
        "largest_share": float(counts.max() / n),
        "rcc": info,
        "seconds_rcc": seconds_rcc,
    }
    return centroids, labels.astype(np.int32), stats


def _cluster_means(rows: np.ndarray, labels: np.ndarray, min_size: int) -> np.ndarray:
    """Mean of each RCC cluster with ≥ min_size members, largest first (ties: lowest label)."""
    counts = np.bincount(labels)
    keep = np.flatnonzero(counts >= min_size)
    if len(keep) == 0:
        keep = np.array([int(np.argmax(counts))])
    keep = keep[np.argsort(-counts[keep], kind="stable")]
    sums = np.zeros((counts.size, rows.shape[1]))
    np.add.at(sums, labels, rows.astype(np.float64))
    return (sums[keep] / counts[keep, None]).astype(np.float32)


def _finish(run_dir: Path, epoch: int, cfg: ClusterConfig, ckpt, stats: dict) -> None:
    append_jsonl(
        RunPaths(run_dir).metrics,
        {
            "kind": "cluster",
            "epoch": epoch,
            "k": stats["k"],
            "iterations": stats["iterations"],
            "inertia": stats["inertia"],
            "nmi_prev": stats["nmi_prev"],
            "clusters_used": stats["clusters_used"],
            "empty_split": stats["empty_split"],
            "largest_share": stats["largest_share"],
            "warnings": stats["warnings"],
            "seconds": stats["seconds"],
        },
    )
    if not cfg.keep_checkpoints_after:
        shutil.rmtree(ckpt.folder, ignore_errors=True)
    log.info(
        "epoch %d: %d clusters used of %d, largest %.1f%%, NMI with epoch %d: %s, %.1f s",
        epoch,
        stats["clusters_used"],
        stats["k"],
        100 * stats["largest_share"],
        epoch - 1,
        "n/a" if stats["nmi_prev"] is None else f"{stats['nmi_prev']:.4f}",
        stats["seconds"]["total"],
    )
    for warning in stats["warnings"]:
        log.warning("epoch %d: DEGENERATE LABELS (%s): %s", epoch, cfg.method, warning)
