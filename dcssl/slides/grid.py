"""The tile grid: where tiles lie at level 0, which level they are read from, and read blocks.

A tile covers ``step0`` level-0 pixels (tile_size × target_mpp / mpp, rounded) so the grid is
exact integers at level 0 — the coords stored in the shard. It is read from ``level`` as a
``step0 / downsample`` pixel square and resized to ``tile_size`` when that differs. Neighbouring
candidate tiles are grouped into blocks of up to ``block × block`` tiles: one ``read_region`` per
block instead of one per tile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dcssl.slides.probe import SlideProbe

__all__ = ["TileGrid", "Block", "make_grid", "group_blocks"]


@dataclass(frozen=True)
class TileGrid:
    tile_size: int
    """Output tile edge (px)."""
    step0: int
    """Tile edge at level 0 (px); also the grid pitch (no overlap)."""
    level: int
    """Pyramid level tiles are read from."""
    downsample: float
    """That level's downsample relative to level 0."""
    nx: int
    ny: int

    @property
    def read_size(self) -> float:
        """Tile edge in pixels of the read level (may be fractional: the block is resized)."""
        return self.step0 / self.downsample

    @property
    def needs_resize(self) -> bool:
        return round(self.read_size) != self.tile_size or abs(self.read_size - self.tile_size) > 0.5

    def all_tiles(self) -> np.ndarray:
        """(n, 2) int64 grid indices (column i, row j), row-major."""
        j, i = np.mgrid[0 : self.ny, 0 : self.nx]
        return np.stack([i.ravel(), j.ravel()], axis=1).astype(np.int64)

    def coords(self, ij: np.ndarray) -> np.ndarray:
        """Level-0 top-left x, y of grid tiles."""
        return np.asarray(ij, dtype=np.int64) * self.step0


def make_grid(probe: SlideProbe, level: int, tile_size: int, target_mpp: float) -> TileGrid:
    """Every whole tile inside the slide, on a grid anchored at level-0 (0, 0)."""
    step0 = max(1, round(tile_size * target_mpp / probe.mpp))
    return TileGrid(
        tile_size=tile_size,
        step0=step0,
        level=level,
        downsample=probe.level_downsamples[level],
        nx=probe.width // step0,
        ny=probe.height // step0,
    )


@dataclass(frozen=True)
class Block:
    """A rectangle of grid tiles read at once; ``tiles`` are the candidates inside it."""

    i0: int
    j0: int
    ni: int
    nj: int
    tiles: np.ndarray
    """(k, 2) grid indices of the candidate tiles inside this block, row-major."""


def group_blocks(grid: TileGrid, candidates: np.ndarray, block: int) -> list[Block]:
    """Blocks of ``block × block`` grid cells holding candidates, each trimmed to the bounding box
    of its candidates (less decoding at tissue edges); row-major order."""
    candidates = np.asarray(candidates, dtype=np.int64).reshape(-1, 2)
    if len(candidates) == 0:
        return []
    keys = (candidates[:, 1] // block) * (grid.nx // block + 1) + candidates[:, 0] // block
    order = np.lexsort((candidates[:, 0], candidates[:, 1], keys))
    candidates, keys = candidates[order], keys[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], len(keys)]
    blocks = []
    for s, e in zip(starts, ends):
        tiles = candidates[s:e]
        i0, j0 = tiles.min(axis=0)
        i1, j1 = tiles.max(axis=0) + 1
        blocks.append(Block(int(i0), int(j0), int(i1 - i0), int(j1 - j0), tiles))
    return blocks
