"""ResNet trunk → projection to d (L2-normalised) → linear head of k pseudo-classes.

The head is re-initialised *in place* at every epoch (``reset_head``): the same Parameter
objects keep their place in the optimizer and in the DDP wrapper, so no new model, optimizer,
wrapper or data loader is built per epoch. When k changes between epochs:

- k ≤ the head's rows: the shape stays; rows ≥ k are masked (logit −inf), so they receive no
  gradient and can never be predicted. Nothing else notices.
- k > the head's rows: the head gets new, larger weight and bias Parameters, swapped into the
  same optimizer's param group in place of the old ones (autograd and DDP cache a leaf's shape,
  so a Parameter cannot change shape under them). The caller must re-wrap the model in DDP once,
  because DDP's gradient buckets are sized at construction; ``reset_head`` returns True in
  exactly that case. Growth is monotone: a later, smaller k masks rows again.

Extra heads (``cluster.extra_k``, DeepCluster-v2 / SwAV): one more linear classifier per extra
clustering, of fixed k each, in ``extra_heads``; ``forward`` appends their logits after the
primary head's rows (one output tensor, so DDP sees one forward), and the trainer splits them.
A one-head model has an empty ``extra_heads`` and the state_dict it always had.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from dcssl.train.config import ModelConfig

__all__ = ["DeepClusterNet", "build_trunk", "build_vit", "is_vit", "Sobel"]

_LAYERS = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet50": (Bottleneck, [3, 4, 6, 3])}
VITS = ("vit_tiny_patch16_224", "vit_small_patch16_224", "vit_base_patch16_224")
"""timm Vision Transformers usable as ``train.model.arch`` (tiny: CPU tests; small = ViT-S/16)."""


def is_vit(arch: str) -> bool:
    return arch in VITS


def build_vit(arch: str, in_channels: int = 3) -> nn.Module:
    """A timm ViT without its classifier (pooled class token out); ``.out_dim`` is its width.

    ``dynamic_img_size``: the 224-px position embedding is interpolated to any input size (small
    CPU crops, multi-crop's local views) while the parameters keep timm's shapes, so the export
    loads into ``timm.create_model(arch, checkpoint_path=...)`` unchanged.
    """
    import timm  # heavy import, only for ViT runs

    net = timm.create_model(
        arch, pretrained=False, num_classes=0, in_chans=in_channels, dynamic_img_size=True
    )
    net.out_dim = net.num_features
    return net


class _ScaledResNet(ResNet):
    """torchvision's ResNet with every stage's channels × width/64 (64 = torchvision's exactly).

    The stem is rebuilt when the first stage is made, before torchvision's own initialisation
    loop runs, so every layer gets torchvision's init. ``stem="small"`` (CIFAR-style: a 3×3
    stride-1 conv, no max-pool) keeps 4× more resolution for tiles ≤ 64 px: at 32 px the
    ImageNet stem leaves the last stage a 1×1 map, the small one 4×4.
    """

    def __init__(self, block, layers, width: int, in_channels: int, stem: str = "imagenet"):
        if stem not in ("imagenet", "small"):
            raise ValueError(f"stem must be 'imagenet' or 'small', got {stem!r}")
        object.__setattr__(self, "_width", width)
        object.__setattr__(self, "_in_channels", in_channels)
        object.__setattr__(self, "_stem", stem)
        super().__init__(block, layers)
        if stem == "small":
            self.maxpool = nn.Identity()  # no parameters: torchvision's init is unaffected
        self.out_dim = self.fc.in_features * width // 64
        self.fc = nn.Identity()

    def _make_layer(self, block, planes, blocks, stride=1, dilate=False):
        if planes == 64 and (self._width != 64 or self._in_channels != 3 or self._stem != "imagenet"):
            self.inplanes = self._width
            kernel, step, pad = (3, 1, 1) if self._stem == "small" else (7, 2, 3)
            self.conv1 = nn.Conv2d(
                self._in_channels, self._width, kernel_size=kernel, stride=step, padding=pad, bias=False
            )
            self.bn1 = self._norm_layer(self._width)
        return super()._make_layer(block, planes * self._width // 64, blocks, stride, dilate)


def build_trunk(arch: str, width: int = 64, in_channels: int = 3, stem: str = "imagenet") -> nn.Module:
    """A torchvision ResNet (or a timm ViT) without its classifier; ``.out_dim`` is its feature size.

    ``stem``: "imagenet" (torchvision's) or "small" (3×3 stride-1 conv, no max-pool); ResNets only."""
    if is_vit(arch):
        return build_vit(arch, in_channels)
    block, layers = _LAYERS[arch]
    return _ScaledResNet(block, layers, width, in_channels, stem)


class Sobel(nn.Module):
    """DeepCluster's fixed input filter: grayscale, then horizontal and vertical Sobel gradients."""

    def __init__(self):
        super().__init__()
        kx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        self.register_buffer("kernel", torch.stack([kx, kx.t()])[:, None])  # 2×1×3×3
        self.register_buffer("luma", torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gray = (x * self.luma.to(x.dtype)).sum(1, keepdim=True)
        return F.conv2d(gray, self.kernel.to(x.dtype), padding=1)


class DeepClusterNet(nn.Module):
    """``forward(x) → (logits over the active k classes, L2-normalised embedding)``; ``x`` may be a
    list of batches of different sizes (multi-crop), whose rows are then concatenated."""

    def __init__(self, cfg: ModelConfig, k: int):
        super().__init__()
        if k < 1:
            raise ValueError(f"k must be ≥ 1, got {k}")
        self.cfg = cfg
        self.sobel = Sobel() if cfg.sobel else None
        self.trunk = build_trunk(cfg.arch, cfg.width, 2 if cfg.sobel else 3, cfg.stem)
        feat = self.trunk.out_dim
        if cfg.proj_hidden:
            self.projection: nn.Module = nn.Sequential(
                nn.Linear(feat, cfg.proj_hidden),
                nn.BatchNorm1d(cfg.proj_hidden),
                nn.ReLU(inplace=True),
                nn.Linear(cfg.proj_hidden, cfg.proj_dim),
            )
        else:
            self.projection = nn.Linear(feat, cfg.proj_dim)
        self.head = nn.Linear(cfg.proj_dim, k)
        self.extra_heads = nn.ModuleList()
        self.register_buffer("active_k", torch.tensor(k, dtype=torch.int64))
        self.reset_head(k)

    @property
    def k(self) -> int:
        return int(self.active_k)

    @property
    def head_rows(self) -> int:
        return self.head.weight.shape[0]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        if self.sobel is not None:
            x = self.sobel(x)
        return F.normalize(self.projection(self.trunk(x)).float(), dim=1)

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        # multi-crop: one forward over views of several sizes (DDP allows one forward per backward)
        z = torch.cat([self.embed(v) for v in x]) if isinstance(x, list) else self.embed(x)
        logits = self.head(z) / self.cfg.temperature
        if self.k < self.head_rows:
            masked = torch.arange(self.head_rows, device=logits.device) >= self.active_k
            logits = logits.masked_fill(masked, float("-inf"))
        if len(self.extra_heads):
            logits = torch.cat([logits, *(head(z) / self.cfg.temperature for head in self.extra_heads)], 1)
        return logits, z

    @property
    def extra_k(self) -> list[int]:
        return [head.out_features for head in self.extra_heads]

    def split_logits(self, logits: torch.Tensor) -> list[torch.Tensor]:
        """``forward``'s logits as [primary head's, extra head 1's, …]."""
        return list(torch.split(logits, [self.head_rows, *self.extra_k], dim=1))

    @torch.no_grad()
    def set_extra_heads(self, ks: list[int], optimizer: torch.optim.Optimizer | None = None) -> bool:
        """Give the model exactly one extra head per entry of ``ks`` (fresh heads, drawn by
        ``reset_extra_heads``), their parameters in ``optimizer``'s head group; True if they changed
        (re-wrap the model in DDP then)."""
        if list(ks) == self.extra_k:
            return False
        old = {id(p) for p in self.extra_heads.parameters()}
        device = self.head.weight.device
        self.extra_heads = nn.ModuleList(nn.Linear(self.cfg.proj_dim, k).to(device) for k in ks)
        if optimizer is not None:
            head_group = optimizer.param_groups[1]
            for p in list(optimizer.state):
                if id(p) in old:
                    optimizer.state.pop(p)
            kept = [p for p in head_group["params"] if id(p) not in old]
            head_group["params"] = kept + list(self.extra_heads.parameters())
        return True

    @torch.no_grad()
    def reset_extra_heads(
        self, optimizer: torch.optim.Optimizer | None = None, generator: torch.Generator | None = None
    ) -> None:
        """Re-draw every extra head as ``reset_head`` draws the primary (after it, same generator)."""
        for head in self.extra_heads:
            head.weight.copy_(torch.randn(head.weight.shape, generator=generator) * self.cfg.head_init_std)
            head.bias.zero_()
            if optimizer is not None:
                for p in head.parameters():
                    optimizer.state.pop(p, None)

    @torch.no_grad()
    def grow_head(self, rows: int, optimizer: torch.optim.Optimizer | None = None) -> bool:
        """Give the head at least ``rows`` rows; True if it grew."""
        return rows > self.head_rows and self.set_head_rows(rows, optimizer)

    @torch.no_grad()
    def set_head_rows(self, rows: int, optimizer: torch.optim.Optimizer | None = None) -> bool:
        """Give the head exactly ``rows`` rows (to load a checkpoint); True if the shape changed.

        A new shape means new Parameters, swapped into ``optimizer``'s param groups where the
        old ones were (their optimizer state is dropped).
        """
        if rows == self.head_rows:
            return False
        old = {"weight": self.head.weight, "bias": self.head.bias}
        new = {
            "weight": nn.Parameter(old["weight"].new_zeros(rows, old["weight"].shape[1])),
            "bias": nn.Parameter(old["bias"].new_zeros(rows)),
        }
        for name, param in new.items():
            setattr(self.head, name, param)
        self.head.out_features = rows
        if optimizer is not None:
            swap = {id(old[name]): new[name] for name in old}
            for group in optimizer.param_groups:
                group["params"] = [swap.get(id(p), p) for p in group["params"]]
            for p in old.values():
                optimizer.state.pop(p, None)
        return True

    @torch.no_grad()
    def reset_head(
        self,
        k: int | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        generator: torch.Generator | None = None,
    ) -> bool:
        """Re-draw the head in place: weights N(0, head_init_std), bias 0; forget its optimizer
        state (momentum). ``k`` sets the number of active classes (None: keep it).

        Returns True when the head had to grow (k > rows): re-wrap the model in DDP then.
        The draw comes from ``generator`` (CPU) so every rank draws the same head.
        """
        k = self.k if k is None else int(k)
        if k < 1:
            raise ValueError(f"k must be ≥ 1, got {k}")
        grew = self.grow_head(k, optimizer)
        self.active_k.fill_(k)
        w = torch.randn(self.head.weight.shape, generator=generator) * self.cfg.head_init_std
        self.head.weight.copy_(w)
        self.head.bias.zero_()
        if optimizer is not None:
            for p in self.head.parameters():
                optimizer.state.pop(p, None)
        return grew

    @torch.no_grad()
    def set_head_weights(self, centroids: torch.Tensor, head: int = 0) -> None:
        """Use ``centroids`` (k × d, unit rows) as the head's first k rows, bias 0 (DeepCluster-v2:
        logits = cosine to the centroids / temperature); all-zero rows (empty clusters) keep
        their random draw. ``head``: 0 the primary, h ≥ 1 extra head h."""
        layer, k_now = (
            (self.head, self.k) if head == 0 else (self.extra_heads[head - 1], self.extra_k[head - 1])
        )
        k = centroids.shape[0]
        if k != k_now or centroids.shape[1] != layer.weight.shape[1]:
            raise ValueError(
                f"centroids are {tuple(centroids.shape)}, head {head} has k={k_now} of {self.cfg.proj_dim}"
            )
        filled = centroids.abs().sum(1) > 0
        rows = layer.weight[:k]
        rows[filled] = centroids[filled].to(rows)
        layer.bias.zero_()

    def trunk_parameters(self) -> list[nn.Parameter]:
        """Everything but the heads (trunk and projection)."""
        head = {id(p) for p in [*self.head.parameters(), *self.extra_heads.parameters()]}
        return [p for p in self.parameters() if id(p) not in head]
