"""H&E augmentations on whole batches, on the CPU (loader workers) or the GPU, reproducible per tile.

Every random choice for a tile comes from ``N_PARAMS`` uniforms that are a pure function of the
tile's sample seed (itself a function of (seed, epoch, position in the epoch)). So the
augmentation of a sample does not depend on which worker, rank or device made it, or on whether
the run was interrupted: a resumed run sees exactly the pixels the uninterrupted one would.

The whole chain — random resized crop, flips, 90° rotations (one affine grid per tile), colour
jitter, HED stain jitter, grayscale, normalisation — is vectorised over the batch, so it runs as a
handful of tensor ops on either device.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from dcssl.train.config import AugmentConfig

__all__ = [
    "N_PARAMS",
    "mix_seed",
    "splitmix64",
    "sample_seeds",
    "uniforms",
    "view_uniforms",
    "BatchAugment",
    "MultiCrop",
    "eval_transform",
    "to_float",
]

N_PARAMS = 20
_U64 = np.uint64
_MASK = (1 << 64) - 1

# Ruifrok & Johnston stain vectors (as in skimage.color): rows are H, E, DAB optical densities.
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)
_LUMA = torch.tensor([0.299, 0.587, 0.114])
_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic): a fast counter-based hash."""
    with np.errstate(over="ignore"):
        z = x + _U64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> _U64(30))) * _U64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> _U64(27))) * _U64(0x94D049BB133111EB)
        return z ^ (z >> _U64(31))


def mix_seed(*parts: int) -> int:
    """One 63-bit seed from several integers (seed, epoch, …), stable across runs and platforms."""
    h = 0x2545F4914F6CDD1D
    for part in parts:
        h = int(splitmix64(np.array([(h ^ (part & _MASK)) & _MASK], dtype=_U64))[0])
    return h >> 1


def sample_seeds(seed: int, epoch: int, positions: np.ndarray) -> np.ndarray:
    """Per-sample seeds (int64 ≥ 0) for global positions within an epoch."""
    base = _U64(mix_seed(seed, epoch, 0xA46))
    with np.errstate(over="ignore"):
        mixed = splitmix64(np.asarray(positions, dtype=_U64) + base)
    return (mixed >> _U64(1)).astype(np.int64)


def uniforms(seeds: np.ndarray) -> np.ndarray:
    """(n, N_PARAMS) float32 uniforms in [0, 1), a pure function of each sample's seed."""
    s = np.asarray(seeds, dtype=np.int64).astype(_U64)[:, None]
    with np.errstate(over="ignore"):
        counters = s * _U64(N_PARAMS) + np.arange(N_PARAMS, dtype=_U64)[None, :]
    bits = splitmix64(counters) >> _U64(40)  # 24 bits: exactly representable in float32
    return (bits.astype(np.float32) / np.float32(1 << 24)).astype(np.float32)


def view_uniforms(seeds: np.ndarray, views: int) -> np.ndarray:
    """(n, views, N_PARAMS) uniforms: one independent stream per view (crop) of each sample.

    View 0 is ``uniforms(seeds)`` itself, so a single-crop run sees the same first view; view v
    hashes (sample seed, v), so every crop is as reproducible (and resumable) as the sample."""
    seeds = np.asarray(seeds, dtype=np.int64)
    out = np.empty((seeds.size, views, N_PARAMS), dtype=np.float32)
    for v in range(views):
        if v == 0:
            out[:, 0] = uniforms(seeds)
            continue
        with np.errstate(over="ignore"):
            mixed = splitmix64(seeds.astype(_U64) ^ _U64(mix_seed(0x5EED, v)))
        out[:, v] = uniforms((mixed >> _U64(1)).astype(np.int64))
    return out


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] → float32 [0, 1]."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


def _normalise(
    x: torch.Tensor, mean: list[float], std: list[float], out: torch.Tensor | None = None
) -> torch.Tensor:
    scale = 1.0 / torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    shift = -torch.tensor(mean, device=x.device).view(1, 3, 1, 1) * scale
    return torch.addcmul(shift, x, scale, out=out)  # (x - mean) / std in one pass


def eval_transform(images: torch.Tensor, cfg: AugmentConfig, out: torch.Tensor | None = None) -> torch.Tensor:
    """Extraction view: the whole tile resized to ``cfg.size``, normalised (no randomness).
    ``out``: where to write the result (e.g. a shared-memory batch in a loader worker)."""
    x = to_float(images)
    if x.shape[-1] != cfg.size or x.shape[-2] != cfg.size:
        x = F.interpolate(x, size=(cfg.size, cfg.size), mode="bilinear", antialias=True, align_corners=False)
    return _normalise(x, cfg.mean, cfg.std, out)


class BatchAugment:
    """Training view of a batch: ``aug(images uint8 N×3×H×W, u float N×N_PARAMS) → N×3×S×S``."""

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg

    def __call__(
        self, images: torch.Tensor, u: torch.Tensor, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        u = u.to(images.device, torch.float32)
        x = self._geometry(to_float(images), u)
        # Colour jitter and grayscale are linear per pixel: each tile's chain folds into one 3×3
        # matrix and offset, applied in a single pass (HED jitter, being non-linear, splits it).
        matrix, offset = _identity(len(x), x.device)
        if self.cfg.color in ("jitter", "both"):
            matrix, offset = self._jitter(x, u)
        if self.cfg.color in ("hed", "both"):
            x = self._hed(_apply(x, matrix, offset).clamp_(0.0, 1.0), u)
            matrix, offset = _identity(len(x), x.device)
        if self.cfg.grayscale_p > 0:
            gray = self._grayscale(u)
            matrix, offset = gray @ matrix, (gray @ offset[..., None])[..., 0]
        x = _apply(x, matrix, offset).clamp_(0.0, 1.0)
        return _normalise(x, self.cfg.mean, self.cfg.std, out)

    # ---------------------------------------------------------------- geometry: u[:, 0:7]
    def _geometry(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        area = c.scale_min + u[:, 0] * (c.scale_max - c.scale_min)
        log_r = math.log(c.ratio_min) + u[:, 1] * (math.log(c.ratio_max) - math.log(c.ratio_min))
        ratio = torch.exp(log_r)
        w = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width / tile width
        h = torch.sqrt(area / ratio).clamp(max=1.0)
        cx = (2 * u[:, 2] - 1) * (1 - w)  # crop centre in [-1, 1] grid coordinates
        cy = (2 * u[:, 3] - 1) * (1 - h)
        # flips and k·90° rotation act on the output grid before it is mapped into the crop
        one = torch.ones_like(u[:, 4])
        fx = torch.where(u[:, 4] < 0.5, -one, one) if c.flips else one
        fy = torch.where(u[:, 5] < 0.5, -one, one) if c.flips else one
        k = (u[:, 6] * 4).floor() if c.rot90 else torch.zeros_like(u[:, 6])
        cos, sin = torch.cos(k * math.pi / 2).round(), torch.sin(k * math.pi / 2).round()
        theta = torch.zeros(len(x), 2, 3, device=x.device)
        theta[:, 0, 0], theta[:, 0, 1] = w * fx * cos, -w * fx * sin
        theta[:, 1, 0], theta[:, 1, 1] = h * fy * sin, h * fy * cos
        theta[:, 0, 2], theta[:, 1, 2] = cx, cy
        size = (len(x), x.shape[1], c.size, c.size)
        grid = F.affine_grid(theta, size, align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    # ---------------------------------------------------------------- colour: u[:, 7:12]
    def _jitter(self, x: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Brightness b, contrast c, saturation s, hue h as one affine map per tile:
        x ↦ H·S·(c·b·x + (1 - c)·m·1), m = the tile's mean luma after brightness."""
        c = self.cfg
        on = u[:, 7] < c.jitter_p

        def factor(col: int, amount: float) -> torch.Tensor:
            return torch.where(on, 1 + amount * (2 * u[:, col] - 1), torch.ones_like(u[:, col]))

        b, k, s = factor(8, c.brightness), factor(9, c.contrast), factor(10, c.saturation)
        luma = _LUMA.to(x.device)
        mean = b * (x.mean(dim=(2, 3)) @ luma)  # N
        eye = torch.eye(3, device=x.device)
        sat = s.view(-1, 1, 1) * eye + (1 - s).view(-1, 1, 1) * torch.outer(
            torch.ones(3, device=x.device), luma
        )
        turns = torch.where(on, (2 * u[:, 11] - 1) * c.hue, torch.zeros_like(u[:, 11]))
        hs = _hue_matrix(turns) @ sat  # N×3×3
        matrix = (k * b).view(-1, 1, 1) * hs
        offset = ((1 - k) * mean).view(-1, 1) * hs.sum(dim=2)  # H·S·1 scaled
        return matrix, offset

    # ---------------------------------------------------------------- stains: u[:, 12:18]
    def _hed(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """Scale and shift each stain's concentration: linear in optical density (OD) space,
        od' = R·(α ⊙ (H·od) + β) with H = RGB→HED and R = HED→RGB, applied as one matrix."""
        c = self.cfg
        alpha = 1 + c.hed_sigma * (2 * u[:, 12:15] - 1)  # N×3
        beta = c.hed_bias * (2 * u[:, 15:18] - 1)
        to_hed = _HED_FROM_RGB.t().to(x.device)  # rows: H, E, DAB
        to_rgb = _RGB_FROM_HED.t().to(x.device)
        matrix = to_rgb @ (alpha[..., None] * to_hed)  # N×3×3
        offset = beta @ to_rgb.t()  # N×3
        od = torch.log(x.clamp(min=1e-6)).neg_()
        return torch.exp(_apply(od, matrix, offset).neg_()).clamp_(0.0, 1.0)

    # ---------------------------------------------------------------- gray: u[:, 18]
    def _grayscale(self, u: torch.Tensor) -> torch.Tensor:
        """Per tile: the luma projection 1·L where grayscale applies, else the identity."""
        luma = _LUMA.to(u.device)
        gray = torch.outer(torch.ones(3, device=u.device), luma)
        on = (u[:, 18] < self.cfg.grayscale_p).view(-1, 1, 1)
        return torch.where(on, gray, torch.eye(3, device=u.device))


class MultiCrop:
    """SwAV / DeepCluster-v2 multi-crop: ``global_crops`` views at ``size`` and ``local_crops``
    small views at ``local_size`` (area ``local_scale_min``–``local_scale_max``), each from its own
    uniforms. ``crops(images, u N×V×N_PARAMS) → (G×N×3×S×S, L×N×3×s×s)``."""

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg
        self.globals = BatchAugment(cfg)
        local = replace(
            cfg, size=cfg.local_size, scale_min=cfg.local_scale_min, scale_max=cfg.local_scale_max
        )
        self.locals = BatchAugment(local)

    @property
    def views(self) -> int:
        return self.cfg.global_crops + self.cfg.local_crops

    def __call__(self, images: torch.Tensor, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g, n = self.cfg.global_crops, len(images)
        first = torch.stack([self.globals(images, u[:, v]) for v in range(g)])
        small = [self.locals(images, u[:, v]) for v in range(g, self.views)]
        s = self.cfg.local_size
        second = torch.stack(small) if small else torch.empty(0, n, 3, s, s, device=images.device)
        return first, second


def _identity(n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.eye(3, device=device).expand(n, 3, 3), torch.zeros(n, 3, device=device)


def _apply(x: torch.Tensor, matrix: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Per-tile colour map x ↦ M·x + o over all pixels (one batched matmul)."""
    n, ch, h, w = x.shape
    out = torch.baddbmm(offset[..., None], matrix, x.reshape(n, ch, h * w))
    return out.view(n, ch, h, w)


def _hue_matrix(turns: torch.Tensor) -> torch.Tensor:
    """Rotation of chroma in YIQ space by ``turns`` per tile, as RGB 3×3 matrices."""
    to_yiq = _TO_YIQ.to(turns.device)
    a = turns * 2 * math.pi
    rot = torch.zeros(len(turns), 3, 3, device=turns.device)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2] = torch.cos(a), -torch.sin(a)
    rot[:, 2, 1], rot[:, 2, 2] = torch.sin(a), torch.cos(a)
    return torch.linalg.inv(to_yiq) @ rot @ to_yiq
