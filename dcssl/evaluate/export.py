"""The trained trunk as a torchvision ResNet (or timm ViT) state_dict, plus a JSON of how it was trained.

A ViT trunk (``train.model.arch=vit_*``) is written under timm's keys with a fresh 1000-class
``head``: ``timm.create_model(arch, checkpoint_path=PATH)`` loads it strictly.

``torchvision.models.resnet18()`` (or ``resnet50()``) loads the file with ``strict=True``: the
trunk's keys are torchvision's, and ``fc`` — which DeepCluster never trains — is written as a
fresh 1000-class layer drawn like torchvision's (so nothing is missing; replace it for your task).
A thin trunk (``train.model.width`` ≠ 64), a Sobel input or the small stem
(``train.model.stem=small``) has other shapes or another forward than torchvision's network; it is
still exported, and the JSON says how to rebuild it (``dcssl.train.model``).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import torch

from dcssl.config import load_run_config
from dcssl.epochs.labels import read_stats
from dcssl.evaluate.encoder import NoCheckpoint, trained_encoder
from dcssl.paths import RunPaths
from dcssl.settings import recorded as step_record
from dcssl.train.config import TrainConfig
from dcssl.train.model import is_vit
from hpc.checkpoint import atomic_write_bytes, atomic_write_text, torch_bytes
from hpc.config import to_dict
from hpc.integrity import DamagedFile, verify_digests

__all__ = ["torchvision_state_dict", "export_encoder", "default_export_path", "verify_export"]


def default_export_path(run_dir: str | Path) -> Path:
    return RunPaths(Path(run_dir)).export


def torchvision_state_dict(
    trunk: torch.nn.Module, seed: int = 0, num_classes: int = 1000, classifier: str = "fc"
) -> dict[str, torch.Tensor]:
    """The trunk's tensors under torchvision's keys, with a freshly drawn ``fc`` (timm's ViTs:
    ``classifier="head"``)."""
    state = {k: v.detach().clone() for k, v in trunk.state_dict().items()}
    generator = torch.Generator().manual_seed(seed)
    fc = torch.nn.Linear(trunk.out_dim, num_classes)
    bound = 1.0 / trunk.out_dim**0.5  # nn.Linear's default init, as torchvision leaves fc
    with torch.no_grad():
        fc.weight.uniform_(-bound, bound, generator=generator)
        fc.bias.uniform_(-bound, bound, generator=generator)
    state[f"{classifier}.weight"], state[f"{classifier}.bias"] = fc.weight.detach(), fc.bias.detach()
    return state


def _trained_with(paths: RunPaths, epoch: int) -> dict:
    """The settings the checkpoint's train segment ran with (its record; older runs: config.yaml)."""
    record = step_record(paths, f"train-{epoch:04d}")
    if record is not None:
        return to_dict(record[0])
    return to_dict(load_run_config(paths.root)) if paths.config.is_file() else {}


def _replaced_since(paths: RunPaths, epoch: int) -> bool:
    """Whether a one-off redo replaced epoch − 1's labels after epoch's segment trained on them."""
    record, done = paths.settings(f"cluster-{epoch - 1:04d}"), paths.train_done(epoch)
    redone = step_record(paths, record.stem)
    return bool(redone and redone[1] and done.is_file() and record.stat().st_mtime > done.stat().st_mtime)


def _clusters(paths: RunPaths, epoch: int, trained_with: dict) -> int | None:
    """k of the labels the weights were trained on (epoch − 1's), unless a one-off redo has
    replaced them since: then the k of the run's settings when the segment ran."""
    if epoch >= 1 and not _replaced_since(paths, epoch):
        k = read_stats(paths.root, epoch - 1).get("k")
        if isinstance(k, int):
            return k
    cluster = trained_with.get("cluster") or {}
    return cluster.get("k") if epoch >= 1 and cluster.get("method", "kmeans") == "kmeans" else None


def _rebuild_instructions(cfg: TrainConfig) -> str:
    args = f"{cfg.model.arch!r}, width={cfg.model.width}"
    if cfg.model.sobel:
        args += ", in_channels=2"
    if cfg.model.stem != "imagenet":
        args += f", stem={cfg.model.stem!r}"
    how = (
        f"dcssl.train.model.build_trunk({args}) then load_state_dict(strict=False) (fc is an Identity there)"
    )
    return how + ("; inputs go through dcssl.train.model.Sobel first" if cfg.model.sobel else "")


def export_encoder(run_dir: str | Path, cfg: TrainConfig, out: str | Path | None = None) -> dict:
    """Write the state_dict (``out``, default RUN/export/encoder.pt) and ``out``.json; return the
    JSON document."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else default_export_path(run_dir)
    loaded = trained_encoder(run_dir, cfg)
    trunk = loaded.net.trunk
    # The small stem has torchvision's keys but a 3×3 conv1 and no max-pool: the file would not
    # load (width 64) or would compute something else, so it is never called compatible.
    vit = is_vit(cfg.model.arch)
    compatible = vit or (cfg.model.width == 64 and not cfg.model.sobel and cfg.model.stem == "imagenet")
    paths = RunPaths(run_dir)
    trained_with = _trained_with(paths, loaded.epoch)
    how = (
        f"timm.create_model({cfg.model.arch!r}, checkpoint_path=PATH)"
        if vit
        else f"torchvision.models.{cfg.model.arch}().load_state_dict(torch.load(PATH))"
        if compatible
        else _rebuild_instructions(cfg)
    )
    document = {
        "file": out.name,
        "arch": cfg.model.arch,
        "width": cfg.model.width,
        "stem": cfg.model.stem,
        "sobel": cfg.model.sobel,
        "feature_dim": trunk.out_dim,
        "torchvision_compatible": compatible and not vit,
        "timm_compatible": vit,
        "load": how,
        "fc": "fresh nn.Linear init (seed 0): DeepCluster trains no fc (ViT: head); replace it",
        "input": {
            "size": cfg.augment.size,
            "mean": cfg.augment.mean,
            "std": cfg.augment.std,
            "range": "RGB in [0, 1], then (x - mean) / std",
        },
        "epoch": loaded.epoch,
        "k": _clusters(paths, loaded.epoch, trained_with),
        "checkpoint": str(loaded.checkpoint),
        "checkpoint_step": loaded.step,
        "run_dir": str(run_dir.resolve()),
        "exported": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": trained_with,
    }
    _refuse_going_back(out, loaded.step)
    data = torch_bytes(torchvision_state_dict(trunk, classifier="head" if vit else "fc"))
    document["sha256"] = hashlib.sha256(data).hexdigest()
    # the JSON first: a crash between the two leaves a mismatch `verify` reports, never a new
    # encoder.pt described by an old JSON
    atomic_write_text(out.with_suffix(".json"), json.dumps(document, indent=1, default=str))
    atomic_write_bytes(out, data)
    return document


def _refuse_going_back(out: Path, step: int | None) -> None:
    """NoCheckpoint when ``out`` already holds weights of a later training step."""
    info = out.with_suffix(".json")
    if not (out.is_file() and info.is_file()):
        return
    try:
        previous = json.loads(info.read_text()).get("checkpoint_step")
    except (OSError, ValueError):
        return  # an unreadable description protects nothing: the export is redone
    if isinstance(previous, int) and (step is None or previous > step):
        raise NoCheckpoint(
            f"{out}: holds the weights of step {previous}, newer than step {step} of the newest "
            f"loadable checkpoint; it is kept — export with --out elsewhere to write the older weights"
        )


def verify_export(out: str | Path) -> None:
    """DamagedFile unless ``out`` matches the SHA-256 recorded in its JSON."""
    out = Path(out)
    info = out.with_suffix(".json")
    try:
        recorded = json.loads(info.read_text()).get("sha256")
    except (OSError, ValueError) as err:
        raise DamagedFile(info, f"unreadable ({err})") from None
    if not recorded:
        raise DamagedFile(info, "records no checksum of the export")
    verify_digests(out.parent, {out.name: recorded})
