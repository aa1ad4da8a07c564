"""Resuming the cluster job: what a checkpoint must agree on, loading the newest one on rank 0,
and the per-iteration saver that also agrees on preemption across ranks (every k-means the job
runs — the primary head's and each extra head's — checkpoints through it)."""

from __future__ import annotations

import logging
import os

import numpy as np

from hpc.preemption import PreemptionFlag, requeue_and_exit

from .config import ClusterConfig
from .exact import global_max
from .kmeans import KMeansState
from .pca import PCA

__all__ = ["fingerprint", "load_resume", "Checkpointer", "kmeans_from", "init_from"]

log = logging.getLogger(__name__)


def fingerprint(cfg: ClusterConfig, n: int, dim: int, seed: int) -> dict:
    """What a checkpoint must agree on to be resumed (iterations/tol may change)."""
    keys = (
        "method",
        "k",
        "pca_dim",
        "whiten",
        "l2_normalize",
        "init",
        "init_sample",
        "init_trials",
        "init_refine",
        "block_rows",
    )
    out = {key: getattr(cfg, key) for key in keys}
    if cfg.method == "rcc":
        out["rcc"] = {k: v for k, v in vars(cfg.rcc).items() if k not in ("iterations",)}
        out.pop("k")
    return {**out, "n": n, "dim": dim, "seed": seed}


def load_resume(ckpt, fingerprint: dict, comm) -> dict | None:
    """Rank 0 loads the newest valid checkpoint matching ``fingerprint``; all ranks get it."""
    state = None
    if comm.Get_rank() == 0:
        found = ckpt.load_latest()
        if found is not None:
            step, state = found
            if state["meta"].get("fingerprint") != fingerprint:
                log.warning(
                    "checkpoint %s was made with other settings (%s); starting over",
                    ckpt.path_for(step),
                    state["meta"].get("fingerprint"),
                )
                state = None
    return comm.bcast(state, root=0)


class Checkpointer:
    """After each iteration: rank 0 saves; all ranks agree on preemption and requeue together."""

    def __init__(self, cfg, ckpt, meta: dict, pca: PCA | None, comm, flag: PreemptionFlag):
        self.cfg, self.ckpt, self.meta, self.pca, self.comm, self.flag = cfg, ckpt, meta, pca, comm, flag

    def save(self, state: dict, step: int) -> None:
        if self.comm.Get_rank() == 0:
            pca_state = self.pca.state() if self.pca is not None else {}
            self.ckpt.save({**pca_state, **state, "meta": {**self.meta, **state.get("meta", {})}}, step)

    def __call__(self, ks: KMeansState) -> None:
        self._after(_kmeans_state(ks), ks.iteration, f"iteration {ks.iteration}")

    def init_round(self, state: dict) -> None:
        """After each k-means|| round (step 0: the init's rounds, then its centroids)."""
        rounds = state["init_round"]
        arrays = {key: value for key, value in state.items() if key != "init_round"}
        self._after({**arrays, "meta": {"init_round": rounds}}, 0, f"init round {rounds}")

    def _after(self, state: dict, step: int, what: str) -> None:
        preempted = bool(global_max(float(self.flag.is_set()), self.comm)[0])
        if self.cfg.checkpoint or preempted:
            self.save(state, step)
        if preempted:
            self.comm.Barrier()
            log.warning("preempted after %s: checkpoint saved, requeueing", what)
            requeue_and_exit(
                is_main=self.comm.Get_rank() == 0, code=0 if os.environ.get("SLURM_JOB_ID") else 75
            )


def _kmeans_state(ks: KMeansState) -> dict:
    return {
        "centroids": ks.centroids,
        "meta": {
            "iteration": ks.iteration,
            "inertia": ks.inertia,
            "empty_split": ks.empty_split,
            "seconds": ks.seconds,
            "converged": ks.converged,
        },
    }


def kmeans_from(state: dict) -> KMeansState:
    m = state["meta"]
    return KMeansState(
        np.asarray(state["centroids"], dtype=np.float32),
        m["iteration"],
        list(m["inertia"]),
        list(m["empty_split"]),
        list(m["seconds"]),
        m["converged"],
    )


def init_from(resume: dict | None) -> dict | None:
    """The k-means|| rounds a checkpoint holds (None: none, or the init had finished)."""
    if resume is None or "init_cand" not in resume or "centroids" in resume:
        return None
    return {
        **{key: resume[key] for key in ("init_cand", "init_d2", "init_near")},
        "init_round": resume["meta"]["init_round"],
    }
