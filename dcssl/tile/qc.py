"""Cheap per-tile quality statistics and the slide overview, computed once while tiling.

The report flags artefact clusters from these (it never reads a slide again, and flagging never
excludes anything by itself):

- blur: variance of the Laplacian of the grey image — low on out-of-focus tiles (Pech-Pacheco
  et al. 2000), on a 2× subsample like the background fraction;
- pen: the fraction of saturated pixels whose hue is green/blue/cyan — marker ink, which H&E
  (pink to purple, hues ≈ 270°-360° and 0°-30°) does not produce.

The overview is the low-resolution view the tissue mask was computed from, shrunk to at most
``OVERVIEW_PX`` on its long side: a JPEG thumbnail plus the mask as a PNG of the same size.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

__all__ = ["blur_score", "pen_fraction", "overview_images", "OVERVIEW_PX"]

OVERVIEW_PX = 640
_PEN_HUE = (80.0, 230.0)  # degrees: green, cyan and blue marker ink
_PEN_MIN_SATURATION = 0.35


def blur_score(tiles: np.ndarray, stride: int = 2) -> np.ndarray:
    """Variance of the 4-neighbour Laplacian of each tile's grey image (k×H×W×3 uint8 → k)."""
    if len(tiles) == 0:
        return np.zeros(0, dtype=np.float32)
    grey = tiles[:, ::stride, ::stride].astype(np.float32) @ np.float32([0.299, 0.587, 0.114])
    lap = (
        grey[:, :-2, 1:-1]
        + grey[:, 2:, 1:-1]
        + grey[:, 1:-1, :-2]
        + grey[:, 1:-1, 2:]
        - 4 * grey[:, 1:-1, 1:-1]
    )
    return lap.reshape(len(tiles), -1).var(axis=1).astype(np.float32)


def pen_fraction(tiles: np.ndarray, stride: int = 2) -> np.ndarray:
    """Fraction of each tile's pixels that look like marker ink (saturated green/blue hue)."""
    if len(tiles) == 0:
        return np.zeros(0, dtype=np.float32)
    rgb = tiles[:, ::stride, ::stride].astype(np.float32) / 255.0
    hi, lo = rgb.max(axis=-1), rgb.min(axis=-1)
    chroma = hi - lo
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.maximum(chroma, 1e-6)
    hue = (
        np.where(hi == r, ((g - b) / safe) % 6, np.where(hi == g, (b - r) / safe + 2, (r - g) / safe + 4))
        * 60.0
    )
    saturated = chroma / np.maximum(hi, 1e-6) >= _PEN_MIN_SATURATION
    ink = saturated & (hue >= _PEN_HUE[0]) & (hue <= _PEN_HUE[1])
    return ink.reshape(len(tiles), -1).mean(axis=1).astype(np.float32)


def _encode(image: Image.Image, fmt: str) -> np.ndarray:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 85} if fmt == "JPEG" else {"optimize": True}))
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


def overview_images(view: np.ndarray, mask: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray, float]:
    """(thumbnail JPEG bytes, mask PNG bytes, level-0 pixels per thumbnail pixel)."""
    h, w = view.shape[:2]
    shrink = max(1.0, max(h, w) / OVERVIEW_PX)
    size = (max(1, round(w / shrink)), max(1, round(h / shrink)))
    thumb = Image.fromarray(np.ascontiguousarray(view)).resize(size, Image.BOX)
    small = Image.fromarray(mask.astype(np.uint8) * 255).resize(size, Image.NEAREST)
    return _encode(thumb, "JPEG"), _encode(small.convert("1"), "PNG"), scale * w / size[0]
