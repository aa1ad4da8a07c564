"""The run's encoder, rebuilt from its ``train`` config: from the newest train checkpoint, or at
random init with the seed training started from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from dcssl.train.config import TrainConfig
from dcssl.train.model import DeepClusterNet
from dcssl.train.segment import checkpoint_manager

__all__ = [
    "LoadedEncoder",
    "FrozenEncoder",
    "random_encoder",
    "trained_encoder",
    "checkpoint_folder",
    "NoCheckpoint",
]

# the head is re-drawn every epoch and its row count follows k: never needed for features
_SKIP = ("head.", "extra_heads.", "active_k")


class NoCheckpoint(FileNotFoundError):
    """The run has no loadable train checkpoint yet."""


@dataclass
class LoadedEncoder:
    net: DeepClusterNet
    step: int | None
    """Step of the checkpoint it came from (None: random init)."""
    epoch: int | None
    """Training epoch recorded in that checkpoint, when it records one."""
    checkpoint: Path | None


class FrozenEncoder:
    """``encoder(x) → features``: the pooled trunk output, or the L2-normalised projection."""

    def __init__(self, net: DeepClusterNet, layer: str = "trunk"):
        self.net = net.eval()
        self.layer = layer

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer == "embedding":
            return self.net.embed(x)
        if self.net.sobel is not None:
            x = self.net.sobel(x)
        return self.net.trunk(x)


def checkpoint_folder(run_dir: str | Path) -> Path:
    return checkpoint_manager(run_dir).folder


def random_encoder(cfg: TrainConfig) -> LoadedEncoder:
    """The architecture at random init, drawn exactly as training draws its starting weights."""
    torch.manual_seed(cfg.seed)
    return LoadedEncoder(DeepClusterNet(cfg.model, k=1), None, None, None)


def _model_state(state: Any) -> dict[str, torch.Tensor]:
    """The network's state_dict inside a checkpoint, without DDP's ``module.`` prefix."""
    for key in ("model", "state_dict", "net"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("the checkpoint holds no model state_dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def trained_encoder(run_dir: str | Path, cfg: TrainConfig) -> LoadedEncoder:
    """The network of the newest loadable train checkpoint of the run."""
    folder = checkpoint_folder(run_dir)
    manager = checkpoint_manager(run_dir)
    latest = manager.load_latest()
    if manager.damaged:  # an older checkpoint would hand out older weights as the run's
        raise NoCheckpoint(
            "; ".join(str(err) for err in manager.damaged) + " — the newest weights are damaged, "
            "so the older checkpoint is not used in their place; restore the file, or redo "
            "training from that epoch (python -m dcssl.launch verify RUN says which)"
        )
    if latest is None:
        raise NoCheckpoint(
            f"{folder}: no train checkpoint; train the run first (`python -m dcssl.launch train {run_dir}`)"
        )
    step, state = latest
    weights = {k: v for k, v in _model_state(state).items() if not k.startswith(_SKIP)}
    net = random_encoder(cfg).net
    missing, unexpected = net.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.startswith(_SKIP)]
    if missing or unexpected:
        raise ValueError(
            f"{folder}: checkpoint does not match train.model "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); evaluate with the "
            f"run's own config"
        )
    epoch = state.get("epoch") if isinstance(state, dict) else None
    return LoadedEncoder(net.eval(), step, None if epoch is None else int(epoch), manager.path_for(step))
