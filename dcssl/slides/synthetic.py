"""Synthetic pyramidal TIFF slides with known tissue rectangles (tests, benchmarks, demos).

openslide opens them as ``generic-tiff``: tiled pages, one per level, with resolution tags so
``openslide.mpp-x`` is set. Needs ``tifffile`` (a test dependency), imported on use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["Rect", "write_slide", "corrupt_tile"]

TISSUE = (180, 60, 140)  # a saturated H&E-like purple
GLASS = (240, 240, 240)  # near-white background


@dataclass(frozen=True)
class Rect:
    """A filled rectangle in level-0 pixels."""

    x: int
    y: int
    w: int
    h: int
    color: tuple[int, int, int] = TISSUE


def write_slide(
    path: str | Path,
    width: int,
    height: int,
    rects: Sequence[Rect] = (),
    mpp: float | None = 0.25,
    downsamples: Sequence[int] = (1, 4),
    tile: int = 256,
    background: tuple[int, int, int] = GLASS,
) -> Path:
    """Write a tiled, zlib-compressed pyramid; ``mpp=None`` writes no resolution tags."""
    import tifffile

    image = np.empty((height, width, 3), dtype=np.uint8)
    image[:] = background
    for r in rects:
        image[r.y : r.y + r.h, r.x : r.x + r.w] = r.color
    path = Path(path)
    with tifffile.TiffWriter(path) as tif:
        for n, down in enumerate(downsamples):
            level = image[::down, ::down] if down > 1 else image
            extra = {}
            if mpp is not None:
                per_cm = 1e4 / (mpp * down)
                extra = dict(resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
            tif.write(
                np.ascontiguousarray(level),
                tile=(tile, tile),
                compression="zlib",
                photometric="rgb",
                subfiletype=0 if n == 0 else 1,
                **extra,
            )
    return path


def corrupt_tile(path: str | Path, page: int, tile_index: int) -> None:
    """Overwrite one stored tile's compressed bytes so decoding it fails (a damaged scan)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        tags = tif.pages[page].tags
        offset = tags["TileOffsets"].value[tile_index]
        count = tags["TileByteCounts"].value[tile_index]
    with open(path, "r+b") as handle:
        handle.seek(offset)
        handle.write(b"\xff" * count)
