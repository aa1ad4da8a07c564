"""Level-0 regions of JPEG- and JPEG 2000-tiled TIFF slides (Aperio SVS, generic TIFF), decoded directly.

openslide decodes each tile and then composites it through cairo into premultiplied ARGB,
which openslide-python converts back to RGBA: for a tiler that wants RGB on the level's own
pixel grid, that costs more than the decode (≈ 19 vs ≈ 45 MP/s per core here). This reader takes
the tiles straight from the file (tifffile gives the offsets and the shared JPEG tables), decodes
them with libjpeg-turbo through simplejpeg — keeping the stored components as they are when the
TIFF says RGB, as openslide does (an Adobe marker with transform 0 tells libjpeg so) — and copies
them into the region, with a small cache of decoded tiles (neighbouring reads share the JPEG tiles
they straddle). Decoding is strict, like openslide's: a damaged tile that libjpeg only warns
about raises, and the caller hands the read to openslide, which then reports it.

Aperio's JPEG 2000 tiles (compression 33005: RGB components in a raw J2K codestream, older TCGA
slides) are decoded by OpenJPEG through imagecodecs — the decoder openslide itself links — with
no colour conversion, as openslide does for that compression. Aperio's YCbCr variant (33003)
needs openslide's own YCbCr→RGB arithmetic and stays with openslide.

It serves only what it reproduces bit for bit: level 0 of an Aperio or generic tiled TIFF with
8-bit, 3-sample JPEG (or Aperio RGB JPEG 2000) tiles, whose first tile decodes exactly as
openslide decodes it (checked when opened). Anything else (other compressions, odd layouts, no
imagecodecs for JPEG 2000) gets None from ``open`` and stays with openslide.
"""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
import openslide
import simplejpeg

from dcssl.slides.tissue import region_to_rgb

__all__ = ["TiffTilesLevel0", "JPEG", "APERIO_JP2K_RGB"]

# Formats whose level 0 is the TIFF page's tile grid as stored (Ventana, for one, overlaps tiles).
_PLAIN_LAYOUTS = ("aperio", "generic-tiff")
# APP14 "Adobe", transform 0: the three components are RGB as stored, not YCbCr to convert.
_ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"
_CACHE_TILES = 64  # ≈ 11 MB of 240 px tiles: a block row of strips re-uses what it straddles
JPEG = 7
APERIO_JP2K_RGB = 33005  # Aperio's JPEG 2000 with RGB components (33003 is its YCbCr variant)


def _jpeg2000_decoder():
    """OpenJPEG through imagecodecs (one thread: the tiler's parallelism is its processes)."""
    import imagecodecs

    return lambda data: imagecodecs.jpeg2k_decode(data, numthreads=1)


class TiffTilesLevel0:
    """``read(x, y, w, h)`` → RGB uint8 (h, w, 3) of level 0; outside the image is white."""

    def __init__(self, path: str, page) -> None:
        self.width, self.height = int(page.imagewidth), int(page.imagelength)
        self.tile_w, self.tile_h = int(page.tilewidth), int(page.tilelength)
        self.across = -(-self.width // self.tile_w)
        self.offsets = np.asarray(page.dataoffsets, dtype=np.int64)
        self.counts = np.asarray(page.databytecounts, dtype=np.int64)
        self.decode = (
            _jpeg2000_decoder() if int(page.compression) == APERIO_JP2K_RGB else self._jpeg_decoder(page)
        )
        self.fd = os.open(path, os.O_RDONLY)
        self.cache: OrderedDict[int, np.ndarray] = OrderedDict()

    @staticmethod
    def _jpeg_decoder(page):
        tables = page.jpegtables
        raw_rgb = int(page.photometric) == 2  # RGB stored as is: no YCbCr conversion
        # Every tile's stream: SOI, the Adobe marker where needed, the shared tables (without
        # their SOI and EOI), then the tile's own segments (without its SOI).
        head = b"\xff\xd8" + (_ADOBE_RGB if raw_rgb else b"") + (bytes(tables)[2:-2] if tables else b"")
        return lambda data: simplejpeg.decode_jpeg(head + data[2:], colorspace="RGB", strict=True)

    @classmethod
    def open(cls, path: str, slide: openslide.AbstractSlide) -> TiffTilesLevel0 | None:
        """A reader for ``path``'s level 0, or None where openslide must do the reading."""
        if slide.properties.get("openslide.vendor") not in _PLAIN_LAYOUTS:
            return None
        try:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                page = _level0_page(tif, slide.dimensions)
                if page is None:
                    return None
                reader = cls(path, page)
        except Exception:  # not a TIFF tifffile can parse, an odd one, no imagecodecs: openslide reads it
            return None
        if not reader._matches(slide):
            reader.close()
            return None
        return reader

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _matches(self, slide: openslide.AbstractSlide) -> bool:
        """The first stored tile decodes to exactly openslide's pixels."""
        index = int(np.flatnonzero(self.counts)[0]) if self.counts.any() else -1
        if index < 0:
            return False
        x, y = (index % self.across) * self.tile_w, (index // self.across) * self.tile_h
        w, h = min(self.tile_w, self.width - x), min(self.tile_h, self.height - y)
        try:
            mine = self.read(x, y, w, h)
        except Exception:
            return False
        theirs = region_to_rgb(slide.read_region((x, y), 0, (w, h)))
        self.cache.clear()
        return np.array_equal(mine, theirs)

    def _tile(self, index: int) -> np.ndarray | None:
        cached = self.cache.get(index)
        if cached is not None:
            self.cache.move_to_end(index)
            return cached
        count = int(self.counts[index])
        if count == 0:
            return None  # not scanned: background, as openslide's transparent pixels
        data = os.pread(self.fd, count, int(self.offsets[index]))
        pixels = self.decode(data)
        if pixels.shape != (self.tile_h, self.tile_w, 3):
            raise OSError(f"tile {index}: decoded {pixels.shape}, expected {(self.tile_h, self.tile_w, 3)}")
        self.cache[index] = pixels
        if len(self.cache) > _CACHE_TILES:
            self.cache.popitem(last=False)
        return pixels

    def read(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        out = np.full((h, w, 3), 255, dtype=np.uint8)
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, self.width), min(y + h, self.height)
        if x1 <= x0 or y1 <= y0:
            return out
        for ty in range(y0 // self.tile_h, -(-y1 // self.tile_h)):
            for tx in range(x0 // self.tile_w, -(-x1 // self.tile_w)):
                pixels = self._tile(ty * self.across + tx)
                if pixels is None:
                    continue
                left, top = tx * self.tile_w, ty * self.tile_h
                sx0, sy0 = max(x0, left), max(y0, top)
                sx1, sy1 = min(x1, left + self.tile_w), min(y1, top + self.tile_h)
                out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = pixels[
                    sy0 - top : sy1 - top, sx0 - left : sx1 - left
                ]
        return out


def _level0_page(tif, dimensions: tuple[int, int]):
    """The TIFF page openslide serves as level 0, if it is one this reader can decode."""
    for page in tif.pages:
        if (int(page.imagewidth), int(page.imagelength)) != tuple(dimensions):
            continue
        ok = (
            page.is_tiled
            and int(page.compression) in (JPEG, APERIO_JP2K_RGB)
            and page.bitspersample == 8
            and page.samplesperpixel == 3
            and int(page.planarconfig) == 1
            and int(page.photometric) in (2, 6)
            and page.imagedepth == 1
        )
        return page if ok else None
    return None
