"""Peer self-supervised methods (SimCLR, BYOL, SwAV through ``lightly``) on dcssl's own trunk.

Each peer trains the trunk that ``train.model`` builds (``DeepClusterNet(...).trunk``, Sobel
included), on the same store, with dcssl's batch augmentations (two views per tile from the
tile's seeded uniform streams, the same recipe DeepCluster trains with), at the same input size,
in this process on the configured threads and with DeepCluster's precision (``train.precision``:
bf16 autocast on CPUs with native bf16, as the Trainer does) and memory format. Heads and losses
are lightly's.

Two runs per peer (``race_peer``), each a whole schedule (SGD, cosine lr, BYOL's momentum ramp)
that spans exactly its image budget in whole batches and ends there:

- **equal images**: ``round(images / batch)`` steps, ``images`` being what DeepCluster trained on.
  Nothing in it depends on the clock: given the seed, two runs give bit-identical weights.
- **equal CPU**: DeepCluster's CPU seconds × this peer's own images per CPU second averaged over
  its whole equal-images run, rounded to whole batches; a second run from the same init whose
  schedule spans exactly that (the first run itself when the rounding gives the same steps). The
  CPU it actually used is reported beside the budget: the load moves the rate, so the image
  budget follows the load, but the run, once sized, is as deterministic as the first.

CPU = user + system seconds of this process (every thread) from building the peer to its last
step; lightly is imported before the clock starts (a one-time cost of the bench process, not of
a method).
"""

from __future__ import annotations

import copy
import math
import resource
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from dcssl.train.augment import MultiCrop, sample_seeds, view_uniforms
from dcssl.train.config import TrainConfig
from dcssl.train.data import TileDataset, decode_batch
from dcssl.train.model import DeepClusterNet
from dcssl.train.trainer import resolve_precision

__all__ = ["PEERS", "PeerResult", "PeerRun", "cpu_seconds", "images_for_cpu", "race_peer", "train_peer"]

PEERS = ("simclr", "byol", "swav")


def cpu_seconds(children: bool = False) -> float:
    """User + system CPU seconds of this process (all threads), or of its finished children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class PeerRun:
    """One whole schedule: the trained network and what it cost."""

    method: str
    net: DeepClusterNet
    images: int
    """Tiles drawn: steps × batch."""
    cpu_seconds: float
    """CPU seconds of this process from building the peer to its last step."""
    steps: int = 0
    losses: list[float] = field(default_factory=list)

    @property
    def images_per_cpu_second(self) -> float:
        return self.images / max(self.cpu_seconds, 1e-9)


@dataclass
class PeerResult:
    method: str
    snapshots: dict[str, DeepClusterNet] = field(default_factory=dict)
    """'images' (equal images seen) and 'cpu' (equal CPU time) → the network of that run."""
    images_at: dict[str, int] = field(default_factory=dict)
    cpu_seconds_at: dict[str, float] = field(default_factory=dict)
    """CPU seconds each run actually used."""
    cpu_budget_s: float = 0.0
    """The equal-CPU run's target: DeepCluster's CPU seconds."""
    images_per_cpu_second: float = 0.0
    """The equal-images run's rate, which sized the equal-CPU run."""
    losses: list[float] = field(default_factory=list)
    """The equal-images run's losses."""
    steps: int = 0
    """Steps of both runs (the shared one once when they are the same run)."""


class _Peer(nn.Module):
    """trunk → method head; ``loss(view_a, view_b)``."""

    def __init__(self, method: str, net: DeepClusterNet, amp_dtype: torch.dtype | None = None):
        super().__init__()
        self.amp_dtype = amp_dtype
        from lightly.loss import NegativeCosineSimilarity, NTXentLoss, SwaVLoss
        from lightly.models import modules

        self.method, self.net = method, net
        dim = net.trunk.out_dim
        if method == "simclr":
            self.head, self.criterion = modules.SimCLRProjectionHead(dim, dim, 128), NTXentLoss(0.2)
        elif method == "byol":
            self.head = modules.BYOLProjectionHead(dim, 1024, 128)
            self.predictor = modules.BYOLPredictionHead(128, 1024, 128)
            self.momentum_net, self.momentum_head = copy.deepcopy(net), copy.deepcopy(self.head)
            for p in [*self.momentum_net.parameters(), *self.momentum_head.parameters()]:
                p.requires_grad = False
            self.criterion = NegativeCosineSimilarity()
        elif method == "swav":
            self.head = modules.SwaVProjectionHead(dim, dim, 128)
            self.prototypes = modules.SwaVPrototypes(128, n_prototypes=100)
            self.criterion = SwaVLoss()
        else:
            raise ValueError(f"unknown peer {method!r}; choose from {', '.join(PEERS)}")

    def features(self, x: torch.Tensor, net: DeepClusterNet | None = None) -> torch.Tensor:
        net = net or self.net
        # the trunk under autocast as DeepCluster's is; heads and losses (Sinkhorn, NT-Xent) in fp32
        with torch.autocast("cpu", dtype=self.amp_dtype or torch.float32, enabled=self.amp_dtype is not None):
            return net.trunk(net.sobel(x) if net.sobel is not None else x).float()

    def loss(self, a: torch.Tensor, b: torch.Tensor, progress: float) -> torch.Tensor:
        if self.method == "simclr":
            return self.criterion(self.head(self.features(a)), self.head(self.features(b)))
        if self.method == "byol":
            from lightly.models.utils import update_momentum

            m = 0.99 + 0.01 * (1 - math.cos(math.pi * progress)) / 2  # BYOL's 0.99 → 1
            update_momentum(self.net, self.momentum_net, m)
            update_momentum(self.head, self.momentum_head, m)
            p = [self.predictor(self.head(self.features(v))) for v in (a, b)]
            with torch.no_grad():
                t = [self.momentum_head(self.features(v, self.momentum_net)) for v in (a, b)]
            return 0.5 * (self.criterion(p[0], t[1]) + self.criterion(p[1], t[0]))
        self.prototypes.normalize()
        out = [self.prototypes(nn.functional.normalize(self.head(self.features(v)), dim=1)) for v in (a, b)]
        return self.criterion(out, [])


def _views(dataset: TileDataset, crop: MultiCrop, seed: int, epoch: int, index: np.ndarray, pos: np.ndarray):
    images = decode_batch(dataset.read_encoded(index), dataset.tile_size)
    u = torch.from_numpy(view_uniforms(sample_seeds(seed, epoch, pos), 2))
    views, _ = crop(images, u)
    return [v.contiguous(memory_format=torch.channels_last) for v in views[:2]]


def _cpu_amp_dtype(precision: str) -> torch.dtype | None:
    """DeepCluster's autocast dtype on the CPU (the Trainer's rule), so CPU time is comparable;
    fp16 (a GPU setting that needs a gradient scaler) trains in fp32 here."""
    dtype = resolve_precision(precision, torch.device("cpu"))
    return None if dtype == torch.float16 else dtype


def _import_lightly() -> None:
    import lightly.loss  # noqa: F401 — before the clock: a one-time cost of the process
    import lightly.models  # noqa: F401


def train_peer(
    method: str,
    store_root: str | Path,
    cfg: TrainConfig,
    images: int,
    on_step: Callable[[int, float], None] | None = None,
) -> PeerRun:
    """Train ``method`` from ``cfg.seed``'s init for ``round(images / batch)`` whole batches (≥ 1),
    the cosine schedule spanning exactly those steps; deterministic given the seed."""
    _import_lightly()
    start_cpu = cpu_seconds()
    torch.manual_seed(cfg.seed)
    net = DeepClusterNet(cfg.model, k=1)
    peer = _Peer(method, net, _cpu_amp_dtype(cfg.precision)).to(memory_format=torch.channels_last)
    params = [p for p in peer.parameters() if p.requires_grad]
    lr = 0.06 * cfg.data.batch_size / 256  # lightly's benchmark settings (SGD + cosine)
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    dataset = TileDataset(store_root, cfg.augment, transform_in_worker=False)
    crop = MultiCrop(replace(cfg.augment, global_crops=2, local_crops=0))
    n, batch, rng = len(dataset), cfg.data.batch_size, np.random.default_rng(cfg.seed)
    if n < batch:
        raise ValueError(
            f"{store_root}: {n} tiles, fewer than one batch of {batch}; lower train.data.batch_size"
        )
    total_steps = max(1, round(images / batch))
    run, epoch = PeerRun(method, net, 0, 0.0), 0
    while run.steps < total_steps:
        epoch += 1
        order = rng.permutation(n)
        for lo in range(0, n - batch + 1, batch):
            progress = run.steps / total_steps
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * progress))
            a, b = _views(dataset, crop, cfg.seed, epoch, order[lo : lo + batch], np.arange(lo, lo + batch))
            peer.train()
            loss = peer.loss(a, b, progress)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            run.steps, run.images = run.steps + 1, run.images + batch
            run.losses.append(float(loss.detach()))
            if on_step is not None:
                on_step(run.steps, run.losses[-1])
            if run.steps == total_steps:
                break
    dataset.close()
    net.eval()
    run.cpu_seconds = cpu_seconds() - start_cpu
    return run


def images_for_cpu(rate: float, cpu_budget_s: float, batch: int) -> int:
    """The image budget that ``cpu_budget_s`` buys at ``rate`` images per CPU second, in whole
    batches (≥ 1)."""
    return max(1, round(cpu_budget_s * rate / batch)) * batch


def race_peer(
    method: str,
    store_root: str | Path,
    cfg: TrainConfig,
    images: int,
    cpu_budget_s: float,
    on_step: Callable[[int, float], None] | None = None,
) -> PeerResult:
    """The equal-images run, then the equal-CPU run sized from its rate (module docstring)."""
    first = train_peer(method, store_root, cfg, images, on_step)
    budget = images_for_cpu(first.images_per_cpu_second, cpu_budget_s, cfg.data.batch_size)
    second = first if budget == first.images else train_peer(method, store_root, cfg, budget, on_step)
    result = PeerResult(method, cpu_budget_s=cpu_budget_s, images_per_cpu_second=first.images_per_cpu_second)
    for at, run in (("images", first), ("cpu", second)):
        result.snapshots[at], result.images_at[at], result.cpu_seconds_at[at] = (
            run.net,
            run.images,
            run.cpu_seconds,
        )
    result.losses = first.losses
    result.steps = first.steps + (second.steps if second is not first else 0)
    return result
