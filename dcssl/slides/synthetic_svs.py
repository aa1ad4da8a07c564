"""A TCGA-like synthetic slide of any size: a JPEG-tiled Aperio SVS pyramid written tile by tile.

The tiling benchmark needs 40× slides of 40 k × 40 k and 100 k × 80 k pixels (1.6 and 8 gigapixels)
on a machine whose memory could not hold one level 0. So no level is ever an array: each level's
tiles are yielded one at a time to tifffile as JPEG bytes (libjpeg-turbo through simplejpeg,
YCbCr 4:2:0 as Aperio stores them). Tissue is three ellipses covering ≈ 42 % of the slide:
a tile wholly inside one is a pre-encoded textured tile, a tile clear of every ellipse's bounding
box a pre-encoded glass tile, and only the tiles at the edges are drawn and encoded one by one.

The first page's description is an Aperio one (``AppMag = 40|MPP = 0.25``), so openslide opens
the file as vendor ``aperio`` with mpp and objective power set, and the direct JPEG decoder serves
its level 0 as it serves real SVS files. tifffile asks for imagecodecs' JPEG codec even for tiles
given already encoded: imagecodecs (a dependency, for JPEG 2000) must be installed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import simplejpeg

__all__ = ["write_tcga_like_slide", "ELLIPSES"]

TILE = 256
# (centre x, centre y, semi-axis x, semi-axis y) as fractions of width and height: ≈ 42 % tissue
ELLIPSES = ((0.30, 0.40, 0.22, 0.30), (0.68, 0.55, 0.20, 0.32), (0.50, 0.85, 0.12, 0.08))
_GLASS = (242, 241, 243)
_QUALITY = 70  # Aperio's usual "Q=70"


def _texture(rng: np.random.Generator) -> np.ndarray:
    """An H&E-like tile: pink stroma with darker purple nuclei, smooth enough to compress like
    a real scan (≈ 15-25 KB per 256 px tile at q70)."""
    coarse = rng.normal(0, 1, (TILE // 4, TILE // 4, 1)).repeat(4, 0).repeat(4, 1)
    base = np.array([214, 140, 190], np.float32) + 18 * coarse
    nuclei = rng.random((TILE // 8, TILE // 8)) < 0.15
    dark = nuclei.repeat(8, 0).repeat(8, 1)[..., None]
    pixels = np.where(dark, np.array([110, 60, 150], np.float32) + 10 * coarse, base)
    return np.clip(pixels + rng.normal(0, 4, pixels.shape), 0, 255).astype(np.uint8)


def _encode(pixels: np.ndarray) -> bytes:
    return simplejpeg.encode_jpeg(
        np.ascontiguousarray(pixels), quality=_QUALITY, colorspace="RGB", colorsubsampling="420"
    )


class _Tissue:
    """Which level-0 pixels are tissue, for a slide of ``width × height``."""

    def __init__(self, width: int, height: int):
        self.ellipses = [(cx * width, cy * height, ax * width, ay * height) for cx, cy, ax, ay in ELLIPSES]

    def inside(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        hit = np.zeros(np.broadcast(x, y).shape, dtype=bool)
        for cx, cy, ax, ay in self.ellipses:
            hit |= ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1
        return hit

    def kind(self, x0: float, y0: float, span: float) -> str:
        """'tissue' (all four corners in one ellipse: convex), 'glass' (no bounding box touched)
        or 'edge' (draw it)."""
        xs, ys = np.array([x0, x0 + span, x0, x0 + span]), np.array([y0, y0, y0 + span, y0 + span])
        for cx, cy, ax, ay in self.ellipses:
            if (((xs - cx) / ax) ** 2 + ((ys - cy) / ay) ** 2 <= 1).all():
                return "tissue"
        clear = all(
            x0 > cx + ax or x0 + span < cx - ax or y0 > cy + ay or y0 + span < cy - ay
            for cx, cy, ax, ay in self.ellipses
        )
        return "glass" if clear else "edge"


def _level_tiles(tissue: _Tissue, width: int, height: int, down: int, seed: int) -> Iterator[bytes]:
    """One level's tiles, row-major, as JPEG bytes."""
    rng = np.random.default_rng(seed)
    textures = [_texture(rng) for _ in range(8)]
    encoded = [_encode(t) for t in textures]
    glass_pixels = np.full((TILE, TILE, 3), _GLASS, np.uint8)
    glass = _encode(glass_pixels)
    span = TILE * down
    centres = (np.arange(TILE) + 0.5) * down
    for n_y in range(-(-height // TILE)):
        for n_x in range(-(-width // TILE)):
            x0, y0 = n_x * span, n_y * span
            kind = tissue.kind(x0, y0, span)
            if kind == "glass":
                yield glass
            elif kind == "tissue":
                yield encoded[(n_x * 7 + n_y * 3) % len(encoded)]
            else:
                hit = tissue.inside(x0 + centres[None, :], y0 + centres[:, None])
                yield _encode(np.where(hit[..., None], textures[(n_x + n_y) % len(textures)], glass_pixels))


def write_tcga_like_slide(
    path: str | Path,
    width: int,
    height: int,
    mpp: float = 0.25,
    downsamples: Sequence[int] = (1, 4, 16),
    seed: int = 0,
) -> Path:
    """Write an Aperio-style 40× SVS pyramid (level 0 ``width × height``); returns the path."""
    import tifffile

    path = Path(path)
    tissue = _Tissue(width, height)
    power = round(10 / mpp)
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for n, down in enumerate(downsamples):
            lw, lh = -(-width // down), -(-height // down)
            head = f"{width}x{height} [0,0 {width}x{height}]" if n == 0 else f"{width}x{height} -> {lw}x{lh}"
            tif.write(
                _level_tiles(tissue, lw, lh, down, seed),
                shape=(lh, lw, 3),
                dtype=np.uint8,
                tile=(TILE, TILE),
                compression="jpeg",
                photometric="ycbcr",
                subsampling=(2, 2),
                subfiletype=0 if n == 0 else 1,
                description=(
                    f"Aperio Image Library v12.0.15 \r\n{head} ({TILE}x{TILE}) JPEG/RGB Q={_QUALITY}"
                    f"|AppMag = {power}|MPP = {mpp}"
                ),
                metadata=None,
            )
    return path
