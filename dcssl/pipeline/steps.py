"""Steps of the loop, when each is done, and the task functions that run them (any executor)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from dcssl.paths import RunPaths

__all__ = ["Step", "plan", "is_done", "pending_steps", "stage_argv", "run_stage", "prune_features"]


@dataclass(frozen=True)
class Step:
    kind: str
    """train (epoch 0: bootstrap feature pass) or cluster."""
    epoch: int

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.epoch:04d}"

    @classmethod
    def from_name(cls, name: str) -> Step | None:
        """The step named ``train-0003`` / ``cluster-0003``; None for anything else."""
        kind, _, epoch = name.partition("-")
        return cls(kind, int(epoch)) if kind in ("train", "cluster") and epoch.isdigit() else None


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


def stage_argv(step: Step, run_dir: Path) -> list[str]:
    """The stage's one entry point, ``-m dcssl.train|dcssl.cluster RUN_DIR --epoch E`` (after
    ``python``): what sbatch scripts, local steps and submitit jobs all run."""
    return ["-m", f"dcssl.{step.kind}", str(run_dir), "--epoch", str(step.epoch)]


def redraw_report(run_dir: Path, epoch: int) -> None:
    """Rewrite RUN/report/ for the epoch just clustered; a report that fails is logged and the
    loop goes on (the report is a view, never a reason to stop training)."""
    import logging

    from dcssl.config import load_run_config
    from dcssl.report.build import build_report

    try:
        build_report(Path(run_dir), epoch, load_run_config(run_dir).report)
    except Exception as err:  # noqa: BLE001 — logged with its cause; `launch report` retries it
        logging.getLogger(__name__).warning("report of epoch %d not written: %s", epoch, err, exc_info=True)


def run_stage(kind: str, run_dir: str, epoch: int) -> None:
    """A submitit job: the stage's entry point in this process (so preemption and requeueing
    work as under sbatch); raises when it fails, so the job is marked failed."""
    import importlib

    main = importlib.import_module(f"dcssl.{kind}.__main__").main
    code = main([str(run_dir), "--epoch", str(epoch)])
    if code:
        raise RuntimeError(f"python -m dcssl.{kind} {run_dir} --epoch {epoch} exited {code}")
