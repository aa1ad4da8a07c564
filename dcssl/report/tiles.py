"""Read the shown tiles by global index (one pass over the shards that hold them) and lay them out.

Only the requested rows are read: O(clusters × tiles per page) tiles, whatever the store's size.
JPEG tiles are decoded at reduced size (libjpeg DCT scaling) since montages are small.
"""

from __future__ import annotations

import numpy as np
import simplejpeg
from PIL import Image

from dcssl.store import Store

__all__ = ["read_tiles", "montage", "QC_NAMES"]

QC_NAMES = ("background", "blur", "pen")


def _thumb(encoded, px: int) -> Image.Image:
    array = np.asarray(encoded)
    if array.ndim != 3:  # JPEG: decoded at the smallest DCT scale still ≥ px (4-8× less work)
        array = simplejpeg.decode_jpeg(array.tobytes(), colorspace="RGB", min_height=px, min_width=px)
    image = Image.fromarray(array)
    return image if image.size == (px, px) else image.resize((px, px), Image.BILINEAR)


def read_tiles(
    store: Store, index: np.ndarray, px: int
) -> tuple[dict[int, Image.Image], dict[str, np.ndarray]]:
    """{global index: px×px image} for ``index`` and, aligned with sorted unique ``index``, the
    tiles' shard, level-0 x,y and QC figures (background fraction, blur, pen; NaN where the
    shard has none)."""
    index = np.unique(np.asarray(index, dtype=np.int64))
    shard, row = store.locate(index)
    images: dict[int, Image.Image] = {}
    qc = {name: np.full(index.size, np.nan, dtype=np.float32) for name in QC_NAMES}
    xy = np.zeros((index.size, 2), dtype=np.int64)
    for s in np.unique(shard):
        at = np.flatnonzero(shard == s)
        rows = row[at]
        with store.open_shard(int(s)) as f:
            for g, encoded in zip(index[at], f["tiles"][rows]):
                images[int(g)] = _thumb(encoded, px)
            qc["background"][at] = 1.0 - f["tissue"][rows]
            xy[at] = f["coords"][rows]
            for name in ("blur", "pen"):
                if name in f:
                    qc[name][at] = f[name][rows]
    return images, {"index": index, "shard": shard, "xy": xy, **qc}


def montage(images: list[Image.Image], columns: int, px: int) -> Image.Image:
    rows = max(1, -(-len(images) // columns))
    sheet = Image.new("RGB", (columns * px, rows * px), (245, 245, 245))
    for n, image in enumerate(images):
        sheet.paste(image, ((n % columns) * px, (n // columns) * px))
    return sheet
