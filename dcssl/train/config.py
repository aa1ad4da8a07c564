"""The ``train`` section of the run config: model, data, augmentation and optimiser sub-sections.

Every field has a docstring (rendered into the config reference by ``hpc.config.field_docs``) and
is checked in ``__post_init__`` so a bad value fails at load time with one line naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["ModelConfig", "DataConfig", "AugmentConfig", "OptimConfig", "TrainConfig"]


def _positive(owner: object, *names: str) -> None:
    for name in names:
        if getattr(owner, name) <= 0:
            raise ValueError(f"{name} must be > 0, got {getattr(owner, name)}")


def _fraction(owner: object, *names: str) -> None:
    for name in names:
        if not 0.0 <= getattr(owner, name) <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {getattr(owner, name)}")


@dataclass
class ModelConfig:
    """The network: ResNet or ViT trunk → projection to ``proj_dim`` (L2-normalised) → linear head of k."""

    arch: Literal[
        "resnet18", "resnet50", "vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224"
    ] = "resnet50"
    """Trunk: a torchvision ResNet, or a timm Vision Transformer (vit_small_patch16_224 = ViT-S/16;
    vit_tiny for CPU tests), which takes any input size that is a multiple of 16; width and stem
    apply to ResNets only."""
    width: int = 64
    """Channels of the first stage; 64 is torchvision's network exactly, smaller makes a thin
    ResNet (e.g. 8 for seconds-long CPU tests). Must be a multiple of 8."""
    proj_dim: int = 256
    """Dimension d of the L2-normalised embedding written to the feature bank and clustered."""
    proj_hidden: int = 0
    """Hidden width of a 2-layer MLP projection (Linear-BN-ReLU-Linear); 0 = one linear layer."""
    stem: Literal["imagenet", "small"] = "imagenet"
    """The trunk's first layers: imagenet = torchvision's 7×7 stride-2 conv + 3×3 max-pool (÷4);
    small = one 3×3 stride-1 conv and no max-pool, for tiles ≤ 64 px such as MedMNIST (at 32 px
    the imagenet stem leaves a 1×1 final feature map). small is not torchvision-compatible."""
    sobel: bool = False
    """DeepCluster's fixed Sobel input: grayscale → two gradient channels feed the trunk."""
    temperature: float = 0.1
    """Logits = head(embedding) / temperature: the embedding has unit norm, so without it the
    softmax would start (and stay) near uniform."""
    head_init_std: float = 0.01
    """Std of the normal the head weights are re-drawn from at each reset (DeepCluster: 0.01)."""
    head_init: Literal["random", "centroids"] = "random"
    """How each epoch's head starts: random = N(0, head_init_std) (DeepCluster v1); centroids =
    the L2-normalised mean embedding of each cluster in the previous epoch's feature bank, so the
    logits start as cosine similarity to the centroids / temperature (DeepCluster-v2; keep it
    fixed with optim.head_frozen)."""

    def __post_init__(self) -> None:
        _positive(self, "width", "proj_dim", "temperature", "head_init_std")
        if self.width % 8:
            raise ValueError(f"width must be a multiple of 8, got {self.width}")
        if self.stem not in ("imagenet", "small"):
            raise ValueError(f"stem must be 'imagenet' or 'small', got {self.stem!r}")
        if self.head_init not in ("random", "centroids"):
            raise ValueError(f"head_init must be 'random' or 'centroids', got {self.head_init!r}")
        if self.proj_hidden < 0:
            raise ValueError(f"proj_hidden must be ≥ 0, got {self.proj_hidden}")
        if self.arch.startswith("vit_") and (self.stem != "imagenet" or self.sobel):
            raise ValueError(f"arch={self.arch}: stem=small and sobel are ResNet options; leave them unset")


@dataclass
class DataConfig:
    """Reading the tile store."""

    batch_size: int = 256
    """Tiles per step on each rank (the global batch is batch_size × world size)."""
    workers: int = 8
    """DataLoader worker processes per rank (0: read in the training process)."""
    prefetch_factor: int = 4
    """Batches each worker keeps ready."""
    locking: bool | None = None
    """HDF5 file locking: false on NFS/Lustre, where POSIX locks hang or fail; null follows
    HDF5_USE_FILE_LOCKING."""
    pin_memory: bool = True
    """Page-locked host batches for faster copies to the GPU (ignored on CPU)."""
    max_open_shards: int = 256
    """HDF5 shards a reader process keeps open (least recently used closed first): bounds file
    descriptors and HDF5 cache memory (~0.5 MB per open shard); reopening costs ~2 ms."""
    samples_per_epoch: int = 0
    """Samples drawn per epoch (over all ranks); 0 = the number of labelled tiles (DeepCluster)."""
    shard_window: int = 128
    """Each rank reads its epoch's draws grouped by windows of this many shards (random groups in
    random order, random order within), so a reader keeps a window's shards open instead of
    reopening files every batch; the draws themselves do not change. At most max_open_shards / 2
    (a worker may straddle two windows); 0 = no grouping (every batch spans all shards)."""

    def __post_init__(self) -> None:
        _positive(self, "batch_size", "prefetch_factor", "max_open_shards")
        if self.workers < 0 or self.samples_per_epoch < 0:
            raise ValueError("workers and samples_per_epoch must be ≥ 0")
        if not 0 <= 2 * self.shard_window <= self.max_open_shards:
            raise ValueError(
                f"shard_window must lie in [0, max_open_shards / 2 = {self.max_open_shards // 2}], "
                f"got {self.shard_window}"
            )


@dataclass
class AugmentConfig:
    """H&E augmentations, applied to whole batches (in the loader workers or on the GPU)."""

    size: int = 224
    """Side in pixels of the network input (training crops and extraction resizes)."""
    scale_min: float = 0.2
    """Smallest crop area as a fraction of the tile (random resized crop)."""
    scale_max: float = 1.0
    """Largest crop area as a fraction of the tile."""
    ratio_min: float = 0.75
    """Smallest crop aspect ratio (width / height)."""
    ratio_max: float = 4.0 / 3.0
    """Largest crop aspect ratio."""
    flips: bool = True
    """Random horizontal and vertical flips (tissue has no up or left)."""
    rot90: bool = True
    """Random rotations by multiples of 90°."""
    color: Literal["jitter", "hed", "both", "none"] = "jitter"
    """Colour augmentation: RGB colour jitter, HED stain jitter (Tellez et al.), both, or none."""
    jitter_p: float = 0.8
    """Probability of colour jitter per tile."""
    brightness: float = 0.4
    """Brightness factor drawn from [1 - b, 1 + b]."""
    contrast: float = 0.4
    """Contrast factor drawn from [1 - c, 1 + c]."""
    saturation: float = 0.4
    """Saturation factor drawn from [1 - s, 1 + s]."""
    hue: float = 0.05
    """Hue rotation drawn from [-h, h] turns."""
    hed_sigma: float = 0.05
    """HED jitter: each stain's concentration is scaled by [1 - σ, 1 + σ] …"""
    hed_bias: float = 0.05
    """… and shifted by [-bias, bias]."""
    grayscale_p: float = 0.2
    """Probability of turning a tile gray."""
    global_crops: int = 1
    """Views per tile at ``size`` (2 = the SwAV / DeepCluster-v2 multi-crop recipe); every view is
    classified into the tile's cluster, and the first one's embedding goes to the feature bank."""
    local_crops: int = 0
    """Extra small views per tile at ``local_size`` (multi-crop; SwAV: 6 at 96 px for 224 px)."""
    local_size: int = 96
    """Side in pixels of the small views."""
    local_scale_min: float = 0.05
    """Smallest crop area of a small view, as a fraction of the tile."""
    local_scale_max: float = 0.14
    """Largest crop area of a small view."""
    device: Literal["auto", "cpu", "gpu"] = "auto"
    """Where augmentation runs: cpu = in the loader workers; gpu = on the training device, so the
    CPU only reads and decodes (use when CPU cores cap GPU training); auto = gpu when CUDA exists."""
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    """Per-channel mean subtracted after augmentation."""
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    """Per-channel std divided after augmentation."""

    def __post_init__(self) -> None:
        _positive(self, "size", "scale_min", "ratio_min", "global_crops", "local_size", "local_scale_min")
        _fraction(self, "scale_min", "scale_max", "jitter_p", "grayscale_p", "local_scale_max")
        if self.local_crops < 0 or self.local_scale_min > self.local_scale_max:
            raise ValueError("local_crops must be ≥ 0 and local_scale_min ≤ local_scale_max")
        if self.scale_min > self.scale_max or self.ratio_min > self.ratio_max:
            raise ValueError("scale_min/ratio_min must not exceed scale_max/ratio_max")
        for name in ("brightness", "contrast", "saturation", "hue", "hed_sigma", "hed_bias"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need 3 values each, std > 0")

    @property
    def views(self) -> int:
        """Training views per tile (1 unless multi-crop is on)."""
        return self.global_crops + self.local_crops


@dataclass
class OptimConfig:
    """SGD with momentum; the schedule runs on epoch progress so it is continuous across segments."""

    lr: float = 0.05
    """Peak learning rate (DeepCluster: 0.05 at batch 256)."""
    momentum: float = 0.9
    """SGD momentum."""
    weight_decay: float = 1e-5
    """L2 penalty (DeepCluster: 1e-5)."""
    head_lr_scale: float = 1.0
    """The head's learning rate is lr × this."""
    head_frozen: float = 0.0
    """Fraction of every epoch (from its start) during which the head is not trained (lr 0): with
    model.head_init=centroids, 1.0 is DeepCluster-v2 (the centroids are the classifier), a
    fraction lets the trunk adapt to the new clusters before the head moves."""
    schedule: Literal["constant", "cosine"] = "constant"
    """constant (DeepCluster v1) or cosine decay to min_lr at the end of `epochs`."""
    epochs: int = 100
    """Epochs the cosine schedule spans."""
    warmup_epochs: float = 0.0
    """Linear warm-up from 0 over this many (fractional) epochs, counted from epoch 1."""
    min_lr: float = 0.0
    """Floor of the cosine schedule."""

    def __post_init__(self) -> None:
        _positive(self, "lr", "epochs", "head_lr_scale")
        _fraction(self, "momentum", "head_frozen")
        if self.weight_decay < 0 or self.warmup_epochs < 0 or self.min_lr < 0:
            raise ValueError("weight_decay, warmup_epochs and min_lr must be ≥ 0")


@dataclass
class TrainConfig:
    """One DeepCluster training segment (section ``train`` of RUN_DIR/config.yaml)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """The network."""
    data: DataConfig = field(default_factory=DataConfig)
    """Reading the tile store."""
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    """Augmentations."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser and learning-rate schedule."""
    seed: int = 0
    """Seeds the initial weights, every epoch's sample order and every tile's augmentation: the
    same seed gives the same weights, with or without preemptions in between."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """auto: bf16 autocast on GPUs that support it and on CPUs with native bf16 (AVX512-BF16 /
    AMX), fp32 otherwise; fp16: float16 autocast with a dynamic gradient scaler, for GPUs without
    bf16 (V100, T4); the scaler's state is part of the checkpoint."""
    channels_last: bool = True
    """channels_last memory format (faster convolutions, on GPUs and with oneDNN on CPUs)."""
    feature_source: Literal["train", "extract"] = "train"
    """train: record embeddings while training (DeepCluster-v2 memory bank; unvisited tiles keep
    their last embedding); extract: an eval-mode pass over all tiles after the epoch (exact v1)."""
    extract_batch_size: int = 0
    """Tiles per forward in extraction passes; 0 = 2 × data.batch_size."""
    max_steps: int = 0
    """Step budget per job: stop (with a checkpoint) after this many steps; under SLURM the job
    requeues itself to continue, elsewhere the next run of the segment does; 0 = whole epoch."""
    checkpoint_every: int = 500
    """Steps between checkpoints (one is also written at the end and on preemption)."""
    keep_checkpoints: int = 2
    """Checkpoints kept on disk (older ones deleted after a newer one is complete)."""
    log_every: int = 50
    """Steps between progress lines and train_window metrics records."""
    dist_timeout_s: float = 1800.0
    """Timeout of collective operations before a stuck rank fails the job."""

    def __post_init__(self) -> None:
        _positive(self, "checkpoint_every", "log_every", "keep_checkpoints", "dist_timeout_s")
        if self.extract_batch_size < 0 or self.max_steps < 0:
            raise ValueError("extract_batch_size and max_steps must be ≥ 0")
        self._check_smallest_view()

    def _check_smallest_view(self) -> None:
        """A ResNet view must reach the last stage as ≥ 2×2: its stride-2 3×3 conv on a 1×1 map
        sees only padding around one pixel, and torch's CPU bf16 convolution returns NaN weight
        gradients for exactly that shape (torch 2.14, oneDNN), which kills a run silently."""
        if self.model.arch.startswith("vit_"):
            return
        shrink = 16 if self.model.stem == "imagenet" else 4  # input side ÷ this = last stage's input
        views = {"augment.size": self.augment.size}
        if self.augment.local_crops:
            views["augment.local_size"] = self.augment.local_size
        name, side = min(views.items(), key=lambda item: item[1])
        if side <= shrink:
            raise ValueError(
                f"{name}={side} leaves {self.model.arch}'s last stage a 1×1 input "
                f"(stem={self.model.stem}): use ≥ {shrink + 1} px"
                + (" or model.stem=small" if self.model.stem == "imagenet" else "")
            )

    @property
    def extract_batch(self) -> int:
        return self.extract_batch_size or 2 * self.data.batch_size
