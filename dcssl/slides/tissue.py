"""Tissue: a coarse mask from a low-resolution view, and the background fraction of each tile.

Mask: HSV saturation (stained tissue is coloured, glass is grey/white), median-filtered, Otsu
threshold with a floor (a blank slide finds nothing instead of amplifying noise), near-white and
near-black pixels excluded, holes filled, specks below a minimum area removed.

The mask is read from the coarsest pyramid level no coarser than ``mask_mpp``; a slide without
such a level (single-level scans) is read in bounded blocks and each block shrunk on the fly, so
memory never holds more than one block plus the mask itself.

Memory does not grow with the slide's area: the mask is never larger than
``max_mask_megapixels`` (a larger slide's mask is computed at the coarser µm/px that fits), and
the tiles' mask coverage is summed from integral images of bands of mask rows, not of the whole
mask. A band's box sums are the whole-mask integral's exactly (integer differences), so the
candidates are those of one whole-slide integral image.
"""

from __future__ import annotations

import math

import numpy as np
import openslide
from PIL import Image
from scipy import ndimage

from dcssl.slides.config import TissueConfig
from dcssl.slides.probe import SlideProbe, coarsest_level_within

__all__ = [
    "TissueMask",
    "saturation",
    "otsu_threshold",
    "mask_from_rgb",
    "read_low_res",
    "tissue_mask",
    "capped_mask_mpp",
    "background_fraction",
    "rgba_to_rgb",
    "region_to_rgb",
]

_BLOCK = 4096  # level pixels per side of one read while building a low-resolution view
_BAND_ROWS = 512  # mask rows per integral image in ``TissueMask.coverage`` (≈ 13 MB at 3,000 columns)


class TissueMask:
    """A boolean mask and its scale: mask pixel (r, c) covers level-0 pixels ×``scale``."""

    def __init__(self, mask: np.ndarray, scale: float, view: np.ndarray | None = None):
        self.mask = mask
        self.scale = scale
        self.view = view
        """The low-resolution RGB the mask was computed from (the slide's overview)."""

    def coverage(
        self, x0: np.ndarray, y0: np.ndarray, size0: float, band_rows: int = _BAND_ROWS
    ) -> np.ndarray:
        """Fraction of each level-0 square (x0, y0, size0) that lies in the mask.

        Squares are grouped by the band of ``band_rows`` mask rows their top edge falls in; each
        group's sums come from the integral image of just the rows it spans."""
        if len(x0) == 0:
            return np.zeros(0)
        h, w = self.mask.shape
        c0, c1 = self._mask_index(x0, w), self._mask_index(np.asarray(x0) + size0, w)
        r0, r1 = self._mask_index(y0, h), self._mask_index(np.asarray(y0) + size0, h)
        inside = np.zeros(len(c0), dtype=np.int64)
        band = r0 // band_rows
        for b in np.unique(band):
            sel = np.flatnonzero(band == b)
            top, bottom = int(r0[sel].min()), int(r1[sel].max())
            integral = _integral_image(self.mask[top:bottom])
            rt, rb, cl, cr = r0[sel] - top, r1[sel] - top, c0[sel], c1[sel]
            inside[sel] = integral[rb, cr] - integral[rt, cr] - integral[rb, cl] + integral[rt, cl]
        return inside / np.maximum((c1 - c0) * (r1 - r0), 1)

    def _mask_index(self, level0: np.ndarray, limit: int) -> np.ndarray:
        """Level-0 positions → mask row/column edges, clipped to the mask."""
        return np.clip(np.round(np.asarray(level0) / self.scale).astype(np.int64), 0, limit)


def _integral_image(mask: np.ndarray) -> np.ndarray:
    """(h+1, w+1) int64 running sums of a boolean mask, with a zero first row and column."""
    integral = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), dtype=np.int64)
    np.cumsum(mask, axis=0, dtype=np.int64, out=integral[1:, 1:])
    np.cumsum(integral[1:, 1:], axis=1, out=integral[1:, 1:])
    return integral


def region_to_rgb(region: Image.Image) -> np.ndarray:
    """RGB pixels of an openslide RGBA region (``rgba_to_rgb``; opacity checked in C, fast)."""
    rgba = np.asarray(region)
    if region.getextrema()[3][0] == 255:
        return rgba[..., :3]  # a view: callers that need contiguous memory copy what they keep
    return rgba_to_rgb(rgba)


def _channel_min_max(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel darkest and brightest channel (elementwise: ~5× faster than .min(axis=-1))."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.minimum(np.minimum(r, g), b), np.maximum(np.maximum(r, g), b)


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """Composite openslide's RGBA on white: transparent (unscanned) pixels become background."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return rgb  # a view: callers that need contiguous memory copy what they keep
    a = alpha[..., None].astype(np.uint16)
    return ((rgb.astype(np.uint16) * a + 255 * (255 - a)) // 255).astype(np.uint8)


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation scaled to 0-255 (uint8): (max - min) · 255 // max, 0 where max is 0.

    In uint16 (255 · 255 fits): 2 bytes a pixel per temporary where int32 took 4."""
    lo, hi = _channel_min_max(rgb)
    spread = (hi - lo).astype(np.uint16)
    spread *= 255
    spread //= np.maximum(hi, 1)
    return spread.astype(np.uint8)  # max 0 means min 0: the spread, and so the result, is 0


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
    mask = _coloured_pixels(rgb, cfg)  # its temporaries are freed before labelling's int32 labels
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


def _coloured_pixels(rgb: np.ndarray, cfg: TissueConfig) -> np.ndarray:
    """Saturated (median-filtered, above Otsu and the floor), neither near-white nor near-black."""
    sat = saturation(rgb)
    if cfg.median_px > 1:
        sat = ndimage.median_filter(sat, size=cfg.median_px)
    mask = sat > max(otsu_threshold(sat), cfg.min_saturation)
    del sat
    lo, hi = _channel_min_max(rgb)
    mask &= lo < cfg.white_level
    mask &= hi > cfg.black_level
    return mask


def _associated_thumbnail(
    slide: openslide.AbstractSlide, probe: SlideProbe, mpp: float
) -> tuple[np.ndarray, float] | None:
    """The scanner's stored thumbnail (Aperio, …) when it shows the whole of level 0 (same aspect
    ratio) at no coarser than 2 × ``mpp``: decoding it is far cheaper than level 0."""
    try:
        image = slide.associated_images.get("thumbnail")
    except openslide.OpenSlideError:
        return None
    if image is None:
        return None
    w, h = image.size
    if w < 2 or h < 2 or abs((w / h) / (probe.width / probe.height) - 1) > 0.01:
        return None
    scale = probe.width / w
    if probe.mpp * scale > 2 * mpp:
        return None
    rgb = rgba_to_rgb(np.asarray(image.convert("RGBA")))
    shrink = mpp / (probe.mpp * scale)
    if shrink > 1.5:  # finer than needed: bring it to the mask resolution
        size = (max(1, round(w / shrink)), max(1, round(h / shrink)))
        rgb = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize(size, Image.BOX))
        scale = probe.width / size[0]
    return np.ascontiguousarray(rgb), scale


def read_low_res(slide: openslide.AbstractSlide, probe: SlideProbe, mpp: float) -> tuple[np.ndarray, float]:
    """An RGB view of the whole slide at about ``mpp`` µm/px, and its level-0 scale factor.

    From the coarsest pyramid level no coarser than ``mpp``; when that level is still much finer
    (single-level scans), from the scanner's thumbnail if it has one, else from the level read in
    blocks and shrunk on the fly.
    """
    level = coarsest_level_within(probe, mpp)
    if probe.level_mpp(level) < mpp / 2:
        stored = _associated_thumbnail(slide, probe, mpp)
        if stored is not None:
            return stored
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
            x0, y0 = round(lx / shrink), round(ly / shrink)
            x1, y1 = round((lx + bw) / shrink), round((ly + bh) / shrink)
            if x1 > x0 and y1 > y0:
                out[y0:y1, x0:x1] = _shrunk(region, (x1 - x0, y1 - y0))
    return out, probe.width / out_w


def _shrunk(region: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """RGB of an openslide region box-filtered to ``size``. An opaque region is resized as it is
    (RGBA with alpha 255 box-filters to the same RGB), without the two full-size RGB copies that
    compositing first takes: they were most of the tiling's peak memory."""
    if region.getextrema()[3][0] == 255:
        return np.asarray(region.resize(size, Image.BOX))[..., :3]
    block = np.ascontiguousarray(region_to_rgb(region))
    return np.asarray(Image.fromarray(block).resize(size, Image.BOX))


def capped_mask_mpp(probe: SlideProbe, cfg: TissueConfig) -> float:
    """``cfg.mask_mpp``, or the coarser µm/px at which the whole slide fits in
    ``cfg.max_mask_megapixels`` (so the mask's memory does not grow with the slide's area)."""
    fits = probe.mpp * math.sqrt(probe.width * probe.height / (cfg.max_mask_megapixels * 1e6))
    return max(cfg.mask_mpp, fits)


def tissue_mask(slide: openslide.AbstractSlide, probe: SlideProbe, cfg: TissueConfig) -> TissueMask:
    rgb, scale = read_low_res(slide, probe, capped_mask_mpp(probe, cfg))
    return TissueMask(mask_from_rgb(rgb, cfg, probe.mpp * scale), scale, view=rgb)


def background_fraction(tiles: np.ndarray, white_level: int, black_level: int, stride: int = 2) -> np.ndarray:
    """Per tile (k×H×W×3 uint8): the fraction of near-white or near-black pixels.

    Every ``stride``-th pixel is inspected: a quarter of the work, the same answer to ±1 %.
    """
    lo, hi = _channel_min_max(tiles[:, ::stride, ::stride])
    background = (lo >= white_level) | (hi <= black_level)
    return background.reshape(len(tiles), -1).mean(axis=1)
