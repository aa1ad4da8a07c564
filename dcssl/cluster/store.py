"""The cluster job's own files: per-iteration numpy checkpoints (its feature bank input and its
labels output belong to ``dcssl.epochs``).

  checkpoints/cluster/epoch-EEEE/iter-*.pt           npz payloads, newest valid wins
  checkpoints/cluster/epoch-EEEE/head-H/iter-*.pt    extra head H's (``cluster.extra_k``)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from dcssl.paths import RunPaths, epochs_in
from hpc.checkpoint import CheckpointManager

__all__ = ["checkpoints", "checkpointed_epochs"]


def _save_npz(state: dict, path: Path) -> None:
    arrays = {k: np.asarray(v) for k, v in state.items() if k != "meta"}
    arrays["meta"] = np.frombuffer(json.dumps(state.get("meta", {})).encode(), dtype=np.uint8)
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def _load_npz(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as data:
        state = {k: data[k] for k in data.files if k != "meta"}
        state["meta"] = json.loads(data["meta"].tobytes().decode())
    return state


def checkpoints(run_dir: Path, epoch: int, keep: int, head: int = 0) -> CheckpointManager:
    """The primary head's checkpoints (head 0), or extra head ``head``'s inside its folder."""
    folder = RunPaths(Path(run_dir)).cluster_checkpoints(epoch, head)
    return CheckpointManager(folder, prefix="iter", keep=keep, save_fn=_save_npz, load_fn=_load_npz)


def checkpointed_epochs(run_dir: Path) -> list[int]:
    """Epochs that have a cluster checkpoint folder, oldest first."""
    return epochs_in(RunPaths(Path(run_dir)).cluster_checkpoints_root)
