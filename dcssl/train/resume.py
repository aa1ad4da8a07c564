"""Where a training segment resumes from: the train checkpoints, and the newest one checked
never to go behind the finished epochs."""

from __future__ import annotations

from pathlib import Path

from dcssl.epochs.trained import done_path, finished_epochs
from dcssl.paths import RunPaths
from dcssl.train.segment_errors import SegmentError
from hpc.checkpoint import CheckpointManager, load_finite

__all__ = ["checkpoint_manager", "resume_point"]


def checkpoint_manager(run_dir: str | Path, keep: int = 2) -> CheckpointManager:
    return CheckpointManager(
        RunPaths(Path(run_dir)).train_checkpoints, prefix="train", keep=keep, load_fn=load_finite
    )


def resume_point(run_dir: str | Path, keep: int = 2) -> tuple[int, dict] | None:
    """The newest train checkpoint, checked never to go backwards: SegmentError when it (or a
    newer one) is damaged or missing while finished epochs need it — the run would otherwise
    train on from older weights (or from the seed's) and mark the epoch done."""
    manager = checkpoint_manager(run_dir, keep)
    latest = manager.load_latest()
    finished = finished_epochs(run_dir)
    last_done = finished[-1] if finished else -1
    behind = latest is not None and (
        int(latest[1]["epoch"]) < last_done
        or (int(latest[1]["epoch"]) == last_done and latest[1].get("phase") != "done")
    )
    if not manager.damaged and not behind and (latest is not None or last_done < 0):
        return latest
    damaged = "; ".join(str(err) for err in manager.damaged) or f"{manager.folder}: no train checkpoint"
    if latest is None:
        back, redo = "the seed's initial weights", 0
    else:
        epoch, phase = int(latest[1]["epoch"]), latest[1].get("phase")
        back = f"{manager.path_for(latest[0])} (epoch {epoch}, phase {phase})"
        redo = epoch + 1 if phase == "done" else epoch
    raise SegmentError(
        f"{damaged} — finished epochs up to {last_done} have no loadable checkpoint and training "
        f"would go back to {back}; to continue, redo from epoch {redo} (remove "
        f"{done_path(run_dir, redo)} and later, and the damaged files) "
        f"or start a new run directory"
    )
