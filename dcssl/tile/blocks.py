"""Read one block of tiles, drop background tiles, encode the rest — the unit of parallel work.

A block (e.g. 8×8 grid cells) is read with one ``read_region`` per tile row, each spanning only
that row's candidate tiles, at the chosen level; resized once per row when the level's resolution
differs from the target; sliced into tiles in numpy. When a read fails (a corrupt JPEG
or JPEG 2000 tile inside the slide), the block is retried tile by tile on a freshly opened slide
(openslide handles stay broken after an error), so only the unreadable tiles are lost — and
counted.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import openslide
from PIL import Image

from dcssl.slides.grid import Block, TileGrid
from dcssl.slides.tifftiles import TiffTilesLevel0
from dcssl.slides.tissue import background_fraction, region_to_rgb
from dcssl.tile.config import TileConfig
from dcssl.tile.qc import blur_score, pen_fraction

__all__ = ["BlockResult", "BlockReader"]


@dataclass
class BlockResult:
    coords: np.ndarray
    """(k, 2) level-0 x, y of the kept tiles."""
    tissue: np.ndarray
    """(k,) tissue fraction of the kept tiles."""
    tiles: list[bytes] | np.ndarray
    """JPEG bytes (jpeg) or a k×T×T×3 array (raw)."""
    errors: int
    """Tiles of this block that could not be read."""
    candidates: int
    """Candidate tiles in this block (kept + dropped as background + unreadable)."""
    qc: dict[str, np.ndarray]
    """Per kept tile: ``blur`` (variance of the Laplacian) and ``pen`` (ink fraction)."""
    dropped: np.ndarray
    """(m, 2) level-0 x, y of the candidates dropped as background or unreadable."""


def _encode(tile: np.ndarray, quality: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(tile).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


class BlockReader:
    """Holds an open slide (reopened after errors) and turns blocks into kept, encoded tiles."""

    def __init__(self, path: str, grid: TileGrid, cfg: TileConfig, slide: openslide.OpenSlide | None = None):
        self.path = path
        self.grid = grid
        self.cfg = cfg
        self.slide = slide if slide is not None else openslide.OpenSlide(path)
        self._owned = slide is None  # a handle passed in is closed by whoever opened it
        self.direct = TiffTilesLevel0.open(path, self.slide) if cfg.direct_jpeg and grid.level == 0 else None

    def close(self) -> None:
        if self.direct is not None:
            self.direct.close()
        if self._owned:
            self.slide.close()

    def _reopen(self) -> None:
        if self._owned:
            self.slide.close()
        self.slide = openslide.OpenSlide(self.path)
        self._owned = True

    def _read(self, i0: int, j0: int, ni: int, nj: int) -> np.ndarray:
        """Pixels of grid cells [i0, i0+ni) × [j0, j0+nj) at the output resolution (RGB)."""
        g, size = self.grid, self.grid.tile_size
        span_w, span_h = ni * g.read_size, nj * g.read_size
        rgb = self._region(i0 * g.step0, j0 * g.step0, math.ceil(span_w), math.ceil(span_h))
        if not g.needs_resize:
            return rgb[: nj * size, : ni * size]
        image = Image.fromarray(np.ascontiguousarray(rgb))
        image = image.resize((ni * size, nj * size), Image.BILINEAR, box=(0, 0, span_w, span_h))
        return np.asarray(image)

    def _region(self, x: int, y: int, w: int, h: int) -> np.ndarray:
        if self.direct is not None:
            try:
                return self.direct.read(x, y, w, h)
            except Exception:  # noqa: BLE001 — a tile the direct decoder refuses: openslide decides
                pass
        return region_to_rgb(self.slide.read_region((x, y), self.grid.level, (w, h)))

    def _tiles_from_block(self, block: Block) -> tuple[np.ndarray, np.ndarray]:
        """One read per tile row of the block, spanning only that row's candidates: the bounding
        box of a block at a tissue edge is mostly glass, and decoding is the cost."""
        size = self.grid.tile_size
        k = len(block.tiles)
        tiles = np.empty((k, size, size, 3), dtype=np.uint8)
        rows: dict[int, list[int]] = {}
        for n, j in enumerate(block.tiles[:, 1]):
            rows.setdefault(int(j), []).append(n)
        for j, members in rows.items():
            columns = block.tiles[members, 0]
            i_lo = int(columns.min())
            strip = self._read(i_lo, j, int(columns.max()) - i_lo + 1, 1)
            for n, i in zip(members, columns):
                x = (int(i) - i_lo) * size
                tiles[n] = strip[:size, x : x + size]
        return tiles, np.ones(k, dtype=bool)

    def _tiles_one_by_one(self, block: Block) -> tuple[np.ndarray, np.ndarray]:
        size = self.grid.tile_size
        tiles = np.zeros((len(block.tiles), size, size, 3), dtype=np.uint8)
        ok = np.zeros(len(block.tiles), dtype=bool)
        for n, (i, j) in enumerate(block.tiles):
            try:
                tiles[n] = self._read(int(i), int(j), 1, 1)
                ok[n] = True
            except openslide.OpenSlideError:
                self._reopen()
        return tiles, ok

    def process(self, block: Block) -> BlockResult:
        try:
            tiles, ok = self._tiles_from_block(block)
        except openslide.OpenSlideError:
            self._reopen()
            tiles, ok = self._tiles_one_by_one(block)
        tissue_cfg = self.cfg.tissue
        background = background_fraction(tiles, tissue_cfg.white_level, tissue_cfg.black_level)
        keep = ok & (background <= tissue_cfg.max_background)
        kept = tiles[keep]
        if self.cfg.encoding == "jpeg":
            encoded: list[bytes] | np.ndarray = [_encode(t, self.cfg.jpeg_quality) for t in kept]
        else:
            encoded = kept
        return BlockResult(
            coords=self.grid.coords(block.tiles[keep]),
            tissue=(1.0 - background[keep]).astype(np.float32),
            tiles=encoded,
            errors=int((~ok).sum()),
            candidates=len(block.tiles),
            qc={"blur": blur_score(kept), "pen": pen_fraction(kept)},
            dropped=self.grid.coords(block.tiles[~keep]),
        )


# One reader per pool process, set by the pool initializer (a slide handle cannot be pickled).
_READER: BlockReader | None = None


def init_pool_reader(path: str, grid: TileGrid, cfg: TileConfig) -> None:
    global _READER
    _READER = BlockReader(path, grid, cfg)


def process_in_pool(block: Block) -> BlockResult:
    assert _READER is not None, "init_pool_reader was not run in this process"
    return _READER.process(block)
