"""A slide's map from what its shard stored at tiling time: the thumbnail, the tissue-mask outline
(green), kept tiles filled with their cluster's colour, dropped candidates crossed out (grey)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

__all__ = ["cluster_colour", "draw_slide_map", "read_overview", "MAP_PX"]

MAP_PX = 480

_PALETTE = np.array(
    [
        [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
        [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207],
        [174, 199, 232], [255, 187, 120], [152, 223, 138], [255, 152, 150], [197, 176, 213],
        [196, 156, 148], [247, 182, 210], [219, 219, 141], [158, 218, 229], [57, 59, 121],
    ],
    dtype=np.uint8,
)  # fmt: skip


def cluster_colour(cluster: int) -> tuple[int, int, int]:
    """A stable colour per cluster id (20 distinct hues, then they repeat)."""
    return tuple(int(v) for v in _PALETTE[cluster % len(_PALETTE)])


def read_overview(f) -> tuple[Image.Image, np.ndarray, float] | None:
    """(thumbnail, mask as bool array, level-0 px per thumbnail px) of an open shard, or None."""
    if "overview" not in f:
        return None
    thumb = Image.open(io.BytesIO(f["overview/thumbnail"][()].tobytes())).convert("RGB")
    mask = np.asarray(Image.open(io.BytesIO(f["overview/mask"][()].tobytes())).convert("L")) > 0
    return thumb, mask, float(f["overview/thumbnail"].attrs["scale"])


def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, iterations=1, border_value=0)


def draw_slide_map(
    thumb: Image.Image,
    mask: np.ndarray,
    scale: float,
    coords: np.ndarray,
    labels: np.ndarray,
    tile0: float,
    dropped: np.ndarray,
) -> Image.Image:
    """The map: ``coords``/``dropped`` are level-0 x,y, ``tile0`` a tile's level-0 side."""
    grow = max(1.0, MAP_PX / max(thumb.size))  # small slides: enlarge so tiles stay visible
    size = (round(thumb.width * grow), round(thumb.height * grow))
    base = thumb.resize(size, Image.BILINEAR)
    mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
    scale = scale / grow
    fill = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(fill)
    side = max(tile0 / scale, 1.0)
    for (x, y), c in zip(coords / scale, labels):
        colour = (*cluster_colour(int(c)), 150) if c >= 0 else (0, 0, 0, 90)
        draw.rectangle([x, y, x + side - 1, y + side - 1], fill=colour)
    for x, y in dropped / scale:
        draw.line([x, y, x + side - 1, y + side - 1], fill=(90, 90, 90, 200))
        draw.line([x + side - 1, y, x, y + side - 1], fill=(90, 90, 90, 200))
    out = Image.alpha_composite(base.convert("RGBA"), fill).convert("RGB")
    pixels = np.array(out)
    edge = _outline(mask)
    if edge.shape == pixels.shape[:2]:
        pixels[edge] = (0, 170, 0)
    return Image.fromarray(pixels)
