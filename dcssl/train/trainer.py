"""The long-lived training objects of one rank: dataset, sampler, loader, model, optimizer, DDP.

They are built once per process. A new epoch swaps the label array into the dataset and sampler
and resets the head in place (``start_epoch``); the loader, optimizer and DDP wrapper stay (the
wrapper is rebuilt only if the head has to grow, see ``dcssl.train.model``).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from dcssl.epochs.features import open_bank
from dcssl.paths import RunPaths
from dcssl.train.augment import BatchAugment, MultiCrop, eval_transform, mix_seed
from dcssl.train.config import TrainConfig
from dcssl.train.data import TileDataset, make_loader
from dcssl.train.epoch_labels import labels_reused, load_extra_heads
from dcssl.train.model import DeepClusterNet
from dcssl.train.sampler import UniformClusterSampler, labels_digest
from hpc.env import DistEnv

__all__ = ["Trainer", "StepOutput", "resolve_precision", "all_reduce_sum", "cluster_centroids"]

log = logging.getLogger(__name__)


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = plain fp32).

    auto: bf16 on GPUs that support it, and on CPUs with native bf16 (AVX512-BF16/AMX, where
    oneDNN runs bf16 convolutions ~1.5-2x faster than fp32); fp32 elsewhere. fp16 always means
    float16 (its narrow range needs the gradient scaler the Trainer then uses).
    """
    if precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or _native_bf16(device):
        return torch.bfloat16
    return None


def _native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)  # private, hence the guard
    return bool(probe and probe())


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a small tensor over ranks (a no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


@dataclass
class StepOutput:
    loss: torch.Tensor
    """This rank's mean loss of the step (detached, on the device)."""
    embeddings: torch.Tensor
    """L2-normalised embeddings of the batch (detached)."""
    index: torch.Tensor
    """Global tile indices of the batch (CPU)."""
    owner: torch.Tensor
    """True where this sample owns its feature-bank row (CPU)."""


class Trainer:
    """One rank's training state; ``state_dict`` / ``load_state_dict`` are the checkpoint."""

    def __init__(self, run_dir: str | Path, cfg: TrainConfig, env: DistEnv, device: torch.device, k: int = 1):
        self.cfg, self.env, self.device = cfg, env, device
        self.run_dir = Path(run_dir)
        self.amp_dtype = resolve_precision(cfg.precision, device)
        # fp16 overflows/underflows gradients without loss scaling; bf16 has fp32's range
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.channels_last = cfg.channels_last
        where = cfg.augment.device
        self.augment_on_device = where == "gpu" or (where == "auto" and device.type == "cuda")
        self.dataset = TileDataset(
            RunPaths(Path(run_dir)).store,
            cfg.augment,
            locking=cfg.data.locking,
            transform_in_worker=not self.augment_on_device,
            max_open=cfg.data.max_open_shards,
        )
        self.device_augment = BatchAugment(cfg.augment)
        self.multicrop = MultiCrop(cfg.augment) if cfg.augment.views > 1 else None
        torch.manual_seed(cfg.seed)  # the initial weights are a function of the seed alone
        self.model = DeepClusterNet(cfg.model, k).to(device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        o = cfg.optim
        self.optimizer = torch.optim.SGD(
            [
                {"params": self.model.trunk_parameters(), "lr_scale": 1.0},
                {"params": list(self.model.head.parameters()), "lr_scale": o.head_lr_scale},
            ],
            lr=o.lr,
            momentum=o.momentum,
            weight_decay=o.weight_decay,
        )
        self.sampler: UniformClusterSampler | None = None
        self.loader = None
        self.ddp: torch.nn.Module | None = None
        self.epoch, self.position, self.global_step = 0, 0, 0
        self.labels_digest = ""
        self.extra_labels: list[torch.Tensor] = []  # extra heads' labels by global index (cluster.extra_k)

    # ------------------------------------------------------------------ labels and epochs
    def set_labels(self, labels: np.ndarray) -> None:
        """Swap the pseudo-labels into the dataset and sampler (built on the first call only)."""
        self.dataset.set_labels(labels)
        self.labels_digest = labels_digest(labels)
        if self.sampler is None:
            d = self.cfg.data
            self.sampler = UniformClusterSampler(
                labels,
                rank=self.env.rank,
                world_size=self.env.world_size,
                seed=self.cfg.seed,
                samples_per_epoch=d.samples_per_epoch,
                shard_offsets=self.dataset.store.offsets,
                shard_window=d.shard_window,
            )
            self.loader = make_loader(
                self.dataset,
                batch_size=d.batch_size,
                sampler=self.sampler,
                workers=d.workers,
                prefetch_factor=d.prefetch_factor,
                persistent_workers=d.workers > 0,
                pin_memory=d.pin_memory and self.device.type == "cuda",
            )
        else:
            self.sampler.set_labels(labels)

    def start_epoch(self, epoch: int, labels: np.ndarray, k: int) -> None:
        """Begin ``epoch`` on ``labels`` with k classes: swap labels, reset the heads in place —
        unless the labels are the previous epoch's, reused (``loop.recluster_every``): then the
        heads go on where the last epoch left them."""
        self.set_labels(labels)
        extra = self._set_extra_labels(epoch, len(labels))
        self.epoch, self.position = epoch, 0
        self.sampler.set_epoch(epoch, 0)
        if labels_reused(self.run_dir, epoch - 1) and k == self.model.k:
            return
        generator = torch.Generator().manual_seed(mix_seed(self.cfg.seed, epoch, 0x4EAD))
        if self.model.reset_head(k, self.optimizer, generator):
            self.ddp = None  # the head grew: DDP's buckets no longer fit, re-wrap once
        self.model.reset_extra_heads(self.optimizer, generator)
        if self.cfg.model.head_init == "centroids":
            bank = open_bank(self.run_dir, epoch - 1)
            for head, (head_labels, head_k) in enumerate([(labels, k), *extra]):
                self.model.set_head_weights(cluster_centroids(bank, head_labels, head_k), head)

    def _set_extra_labels(self, epoch: int, n: int) -> list[tuple[np.ndarray, int]]:
        """The extra heads' labels of epoch-1 into the trainer, the model's extra heads to fit."""
        extra = load_extra_heads(self.run_dir, epoch - 1, n)
        self.extra_labels = [torch.from_numpy(head_labels.astype(np.int64)) for head_labels, _ in extra]
        if self.model.set_extra_heads([k for _, k in extra], self.optimizer):
            self.ddp = None  # new parameters: DDP's buckets no longer fit
        return extra

    def resume_epoch(self, epoch: int, labels: np.ndarray, position: int) -> None:
        """Continue ``epoch`` at local sample ``position`` (heads and optimizer from a checkpoint)."""
        self.set_labels(labels)
        self._set_extra_labels(epoch, len(labels))
        self.epoch, self.position = epoch, position
        self.sampler.set_epoch(epoch, position)

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.local_len // self.cfg.data.batch_size

    @property
    def step_in_epoch(self) -> int:
        return self.position // self.cfg.data.batch_size

    def lr_at(self, epoch: int, step_in_epoch: int) -> float:
        """The schedule on epoch progress (epoch 1 starts at 0), continuous across segments."""
        o = self.cfg.optim
        t = (epoch - 1) + (step_in_epoch + 1) / max(self.steps_per_epoch, 1)
        if o.warmup_epochs and t < o.warmup_epochs:
            return o.lr * t / o.warmup_epochs
        if o.schedule == "cosine":
            progress = min(t / o.epochs, 1.0)
            return o.min_lr + (o.lr - o.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        return o.lr

    @property
    def head_frozen(self) -> bool:
        """True in the part of the epoch (``optim.head_frozen``) where the head is not trained."""
        return self.step_in_epoch < self.cfg.optim.head_frozen * self.steps_per_epoch

    # ------------------------------------------------------------------ stepping
    def _wrapped(self) -> torch.nn.Module:
        if self.ddp is None:
            if self.env.world_size > 1 and dist.is_initialized():
                ids = [self.device.index] if self.device.type == "cuda" else None
                self.ddp = DistributedDataParallel(self.model, device_ids=ids)
            else:
                self.ddp = self.model
        return self.ddp

    def batches(self, limit: int | None = None) -> Iterator[dict]:
        """Batches from the current position to the epoch's end (or ``limit`` of them)."""
        self.sampler.set_start(self.position)
        for i, batch in enumerate(self.loader):
            if limit is not None and i >= limit:
                break
            yield batch

    def inputs(self, batch: dict, train: bool = True) -> torch.Tensor | list[torch.Tensor]:
        """The network input on the device (augmenting there when configured). Multi-crop
        training: a list [all global views, all small views], each view-major (view 0's N tiles,
        then view 1's …)."""
        images = batch["images"].to(self.device, non_blocking=True)
        if train and self.multicrop is not None:
            if self.augment_on_device:
                views = self.multicrop(images, batch["u"].to(self.device, non_blocking=True))
            else:
                views = (images, batch["local_images"].to(self.device, non_blocking=True))
            return [self._layout(v.flatten(0, 1)) for v in views if v.numel()]
        if self.augment_on_device:
            if train:
                images = self.device_augment(images, batch["u"].to(self.device, non_blocking=True))
            else:
                images = eval_transform(images, self.cfg.augment)
        return self._layout(images)

    def _layout(self, images: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def autocast(self):
        return torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None
        )

    def train_step(self, batch: dict) -> StepOutput:
        """One optimizer step on a batch; advances the position and the global step."""
        model = self._wrapped()
        model.train()
        lr = self.lr_at(self.epoch, self.step_in_epoch)
        trunk_group, head_group = self.optimizer.param_groups
        trunk_group["lr"] = lr * trunk_group["lr_scale"]
        head_group["lr"] = 0.0 if self.head_frozen else lr * head_group["lr_scale"]
        images = self.inputs(batch)
        target = self.dataset.labels_for(batch["index"]).to(self.device, non_blocking=True)
        with self.autocast():
            logits, z = model(images)
        n = len(target)
        views = len(logits) // n  # multi-crop: every view is classified into the tile's cluster
        loss = self._loss(
            logits, [target, *(h[batch["index"]].to(self.device) for h in self.extra_labels)], views
        )
        z = z[:n]  # the first (global) view's embedding is what the feature bank records
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)  # skipped (and the scale lowered) on inf/NaN gradients
        self.scaler.update()
        self.position += len(batch["index"])
        self.global_step += 1
        return StepOutput(loss.detach(), z.detach(), batch["index"], batch["owner"])

    def _loss(self, logits: torch.Tensor, targets: list[torch.Tensor], views: int) -> torch.Tensor:
        """Cross-entropy of the primary head, or the mean over every head's (extra heads)."""
        parts = self.model.split_logits(logits) if len(targets) > 1 else [logits]
        losses = [
            F.cross_entropy(part.float(), t.repeat(views)) for part, t in zip(parts, targets, strict=True)
        ]
        return losses[0] if len(losses) == 1 else torch.stack(losses).mean()

    @torch.no_grad()
    def embed(self, batch: dict) -> torch.Tensor:
        """Eval-mode embeddings of a batch of eval views (no DDP, no collectives)."""
        self.model.eval()
        with self.autocast():
            z = self.model.embed(self.inputs(batch, train=False))
        return z.float()

    # ------------------------------------------------------------------ checkpoint state
    def state_dict(self) -> dict:
        rng = {"torch": torch.get_rng_state(), "numpy": _numpy_rng(), "python": _python_rng()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "epoch": self.epoch,
            "position": self.position,
            "global_step": self.global_step,
            "world_size": self.env.world_size,
            "batch_size": self.cfg.data.batch_size,
            "k": self.model.k,
            "head_rows": self.model.head_rows,
            "labels_digest": self.labels_digest,
            "seed": self.cfg.seed,
            "rng": rng,
        } | ({"extra_k": self.model.extra_k} if self.model.extra_k else {})

    def load_state_dict(self, state: dict) -> None:
        if self.model.set_head_rows(int(state["head_rows"]), self.optimizer):
            self.ddp = None
        if self.model.set_extra_heads(list(state.get("extra_k", [])), self.optimizer):
            self.ddp = None
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler.is_enabled() and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.global_step = int(state["epoch"]), int(state["global_step"])
        self.position = int(state["position"])
        rng = state.get("rng") or {}
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
            _set_numpy_rng(rng["numpy"])
            _set_python_rng(rng["python"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])


def cluster_centroids(bank: np.ndarray, labels: np.ndarray, k: int, block: int = 1 << 16) -> torch.Tensor:
    """(k, d) L2-normalised mean embedding of each cluster (labels −1 left out); an empty
    cluster's row is all zeros. Summed in float64 in blocks, so the memmapped bank is read once."""
    sums = np.zeros((k, bank.shape[1]), dtype=np.float64)
    for lo in range(0, len(labels), block):
        rows, lab = bank[lo : lo + block], labels[lo : lo + block]
        keep = lab >= 0
        np.add.at(sums, lab[keep], rows[keep].astype(np.float64))
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    return torch.from_numpy(np.divide(sums, norms, out=np.zeros_like(sums), where=norms > 0)).float()


# RNG states as tensors, ints and lists: what torch.load(weights_only=True) accepts
def _numpy_rng() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": pos,
        "gauss": [has_gauss, cached],
    }


def _set_numpy_rng(state: dict) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, int(state["pos"]), *state["gauss"]))


def _python_rng() -> dict:
    version, internal, gauss = random.getstate()
    return {"version": version, "state": list(internal), "gauss": gauss}


def _set_python_rng(state: dict) -> None:
    random.setstate((state["version"], tuple(state["state"]), state["gauss"]))
