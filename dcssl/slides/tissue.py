"""Tissue: a coarse mask from a low-resolution view, and the background fraction of each tile.

Mask: HSV saturation (stained tissue is coloured, glass is grey/white), median-filtered, Otsu
threshold with a floor (a blank slide finds nothing instead of amplifying noise), near-white and
near-black pixels excluded, holes filled, specks below a minimum area removed.

The mask is read from the coarsest pyramid level no coarser than ``mask_mpp``; a slide without
such a level (single-level scans) is read in bounded blocks and each block shrunk on the fly, so
memory never holds more than one block plus the mask itself.
"""

from __future__ import annotations

import numpy as np
import openslide
from PIL import Image
from scipy import ndimage

from dcssl.slides.probe import SlideProbe, coarsest_level_within
from dcssl.tile.config import TissueConfig

__all__ = ["TissueMask", "saturation", "otsu_threshold", "mask_from_rgb", "read_low_res",
           "tissue_mask", "background_fraction", "rgba_to_rgb"]

_BLOCK = 4096  # level pixels per side of one read while building a low-resolution view


class TissueMask:
    """A boolean mask and its scale: mask pixel (r, c) covers level-0 pixels ×``scale``."""

    def __init__(self, mask: np.ndarray, scale: float):
        self.mask = mask
        self.scale = scale

    def coverage(self, x0: np.ndarray, y0: np.ndarray, size0: float) -> np.ndarray:
        """Fraction of each level-0 square (x0, y0, size0) that lies in the mask."""
        if len(x0) == 0:
            return np.zeros(0)
        integral = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), dtype=np.int64)
        integral[1:, 1:] = self.mask.astype(np.int64).cumsum(0).cumsum(1)
        h, w = self.mask.shape

        def clip(v, hi):
            return np.clip(np.round(v / self.scale).astype(np.int64), 0, hi)

        c0, c1 = clip(x0, w), clip(x0 + size0, w)
        r0, r1 = clip(y0, h), clip(y0 + size0, h)
        area = np.maximum((c1 - c0) * (r1 - r0), 1)
        inside = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
        return inside / area


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """Composite openslide's RGBA on white: transparent (unscanned) pixels become background."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.uint16)
    return ((rgb.astype(np.uint16) * a + 255 * (255 - a)) // 255).astype(np.uint8)


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation scaled to 0-255 (uint8)."""
    hi = rgb.max(axis=-1).astype(np.int32)
    lo = rgb.min(axis=-1).astype(np.int32)
    return np.where(hi > 0, (hi - lo) * 255 // np.maximum(hi, 1), 0).astype(np.uint8)


def otsu_threshold(values: np.ndarray) -> int:
    """Otsu's threshold on uint8 values (the level maximising between-class variance)."""
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    total = hist.sum()
    if total == 0:
        return 0
    levels = np.arange(256, dtype=np.float64)
    weight0 = hist.cumsum()
    mean0 = (hist * levels).cumsum()
    weight1 = total - weight0
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mean0[-1] * weight0 - mean0 * total) ** 2 / (weight0 * weight1)
    between[~np.isfinite(between)] = 0
    return int(np.argmax(between))


def mask_from_rgb(rgb: np.ndarray, cfg: TissueConfig, pixel_um: float) -> np.ndarray:
    """Tissue mask of a low-resolution RGB view whose pixels are ``pixel_um`` µm wide."""
    sat = saturation(rgb)
    if cfg.median_px > 1:
        sat = ndimage.median_filter(sat, size=cfg.median_px)
    threshold = max(otsu_threshold(sat), cfg.min_saturation)
    mask = sat > threshold
    mask &= rgb.min(axis=-1) < cfg.white_level
    mask &= rgb.max(axis=-1) > cfg.black_level
    if cfg.fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    min_px = cfg.min_component_mm2 * 1e6 / (pixel_um * pixel_um)
    if min_px > 1 and mask.any():
        labels, n = ndimage.label(mask)
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = sizes >= min_px
        keep[0] = False
        mask = keep[labels]
    return mask


def read_low_res(slide: openslide.AbstractSlide, probe: SlideProbe, mpp: float) -> tuple[np.ndarray, float]:
    """An RGB view of the whole slide at about ``mpp`` µm/px, and its level-0 scale factor."""
    level = coarsest_level_within(probe, mpp)
    down = probe.level_downsamples[level]
    lw, lh = probe.level_dimensions[level]
    shrink = max(1.0, mpp / probe.level_mpp(level))
    out_w, out_h = max(1, round(lw / shrink)), max(1, round(lh / shrink))
    out = np.empty((out_h, out_w, 3), dtype=np.uint8)
    step = _BLOCK
    for ly in range(0, lh, step):
        for lx in range(0, lw, step):
            bw, bh = min(step, lw - lx), min(step, lh - ly)
            region = slide.read_region((round(lx * down), round(ly * down)), level, (bw, bh))
            block = rgba_to_rgb(np.asarray(region))
            x0, y0 = round(lx / shrink), round(ly / shrink)
            x1, y1 = round((lx + bw) / shrink), round((ly + bh) / shrink)
            if x1 > x0 and y1 > y0:
                small = Image.fromarray(block).resize((x1 - x0, y1 - y0), Image.BOX)
                out[y0:y1, x0:x1] = np.asarray(small)
    return out, probe.width / out_w


def tissue_mask(slide: openslide.AbstractSlide, probe: SlideProbe, cfg: TissueConfig) -> TissueMask:
    rgb, scale = read_low_res(slide, probe, cfg.mask_mpp)
    return TissueMask(mask_from_rgb(rgb, cfg, probe.mpp * scale), scale)


def background_fraction(tiles: np.ndarray, white_level: int, black_level: int,
                        stride: int = 2) -> np.ndarray:
    """Per tile (k×H×W×3 uint8): the fraction of near-white or near-black pixels.

    Every ``stride``-th pixel is inspected: a quarter of the work, the same answer to ±1 %.
    """
    sample = tiles[:, ::stride, ::stride]
    white = sample.min(axis=-1) >= white_level
    black = sample.max(axis=-1) <= black_level
    return (white | black).reshape(len(tiles), -1).mean(axis=1)
