"""Steps of the loop, when each is done, and the task functions that run them (any executor)."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from dcssl.paths import RunPaths
from hpc.checkpoint import as_disk_full

__all__ = ["Step", "plan", "is_done", "pending_steps", "train_task", "cluster_task", "prune_features"]


@dataclass(frozen=True)
class Step:
    kind: str
    """train (epoch 0: bootstrap feature pass) or cluster."""
    epoch: int

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.epoch:04d}"


def plan(epochs: int) -> list[Step]:
    """Bootstrap pass + clustering, then ``epochs`` × (train segment, clustering)."""
    return [Step(kind, e) for e in range(epochs + 1) for kind in ("train", "cluster")]


def is_done(paths: RunPaths, step: Step) -> bool:
    if step.kind == "train":
        # features of old epochs are pruned; the segment's done marker outlives them
        return paths.train_done(step.epoch).is_file() or paths.features_complete(step.epoch)
    return paths.labels_complete(step.epoch)


def pending_steps(paths: RunPaths, epochs: int) -> list[Step]:
    """Steps still to run, in order (a done step is never redone)."""
    return [s for s in plan(epochs) if not is_done(paths, s)]


def prune_features(paths: RunPaths, epoch: int, keep: int) -> None:
    """Delete feature banks older than the newest ``keep`` once epoch's labels exist.

    The bank of epoch e seeds the rows epoch e+1 does not visit, so the newest is always kept.
    """
    for old in range(0, epoch - max(keep, 1) + 1):
        folder = paths.features(old)
        if folder.is_dir() and paths.labels_complete(old):
            shutil.rmtree(folder, ignore_errors=True)


def train_task(run_dir: str, epoch: int) -> dict:
    """One train segment (epoch 0: bootstrap pass) as this process's rank."""
    from dcssl.settings import load_step_config
    from dcssl.train.segment import run_segment

    cfg = load_step_config(run_dir, Step("train", epoch).name)
    return run_segment(Path(run_dir), epoch, cfg.train)


def cluster_task(run_dir: str, epoch: int) -> dict:
    """Cluster epoch's features (MPI ranks of whatever started us), then report the epoch."""
    from dcssl.cluster.job import run_cluster
    from dcssl.pipeline.report import publish_epoch
    from dcssl.settings import load_step_config
    from hpc.mpi import world

    comm = world()
    cfg = load_step_config(run_dir, Step("cluster", epoch).name)
    stats = run_cluster(Path(run_dir), epoch, cfg.cluster, comm=comm)
    if comm.Get_rank() == 0:
        publish_epoch(RunPaths(Path(run_dir)), epoch)
        prune_features(RunPaths(Path(run_dir)), epoch, cfg.loop.keep_features)
    return stats


def main(argv: list[str] | None = None) -> int:
    """``python -m dcssl.pipeline.steps {train,cluster} RUN_DIR EPOCH`` — what local runs execute."""
    import argparse
    import logging

    logging.basicConfig(
        level=logging.INFO,
        format=f"%(asctime)s r{os.environ.get('RANK', os.environ.get('PMI_RANK', 0))} "
        "%(levelname)s %(name)s: %(message)s",
    )
    parser = argparse.ArgumentParser(prog="python -m dcssl.pipeline.steps")
    parser.add_argument("kind", choices=["train", "cluster"])
    parser.add_argument("run_dir")
    parser.add_argument("epoch", type=int)
    args = parser.parse_args(argv)
    task = train_task if args.kind == "train" else cluster_task
    try:
        task(args.run_dir, args.epoch)
    except OSError as err:
        disk_full = as_disk_full(err, Path(args.run_dir))
        if disk_full is None:
            raise
        print(f"error: {disk_full}", file=sys.stderr, flush=True)  # the line the launcher repeats
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
