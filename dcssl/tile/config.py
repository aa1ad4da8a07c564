"""Settings of the tile stage: section ``tile`` of ``RUN_DIR/config.yaml``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dcssl.slides.config import DownloadConfig, TissueConfig

__all__ = ["TileConfig", "TissueConfig", "DownloadConfig"]


@dataclass
class TileConfig:
    """Slides → tissue tiles at a fixed resolution, one HDF5 shard per slide."""

    tile_size: int = 224
    """Tile edge in pixels at the target resolution."""
    target_mpp: float = 0.5
    """Target resolution in µm/px (0.5 ≈ 20×), whatever the scan's native magnification."""
    mpp_policy: Literal["refuse", "assume"] = "refuse"
    """When a slide has neither openslide.mpp-x nor an objective power: refuse it (a ledger
    reason) or assume ``assumed_mpp``."""
    assumed_mpp: float = 0.25
    """Level-0 µm/px assumed under mpp_policy=assume (0.25 ≈ 40×, usual for TCGA)."""
    allow_upsample: bool = False
    """Allow a scan coarser than target_mpp (tiles would be enlarged); else the slide is refused."""
    encoding: Literal["jpeg", "raw"] = "jpeg"
    """Tiles stored as JPEG bytes (≈ 12× smaller) or raw uint8 arrays."""
    jpeg_quality: int = 85
    """JPEG quality (1-95) when encoding=jpeg."""
    block_tiles: int = 8
    """Tiles per side of one read: an 8×8 block is one read_region instead of 64."""
    direct_jpeg: bool = True
    """Decode level-0 JPEG tiles of tiled TIFF slides (Aperio SVS, …) directly, ~4× faster than
    openslide's read_region and bit-identical to it (checked per slide), and Aperio's RGB JPEG
    2000 tiles (older TCGA slides) through imagecodecs, ~1.6× faster; other slides, and any tile
    the direct decoder refuses, are read by openslide."""
    workers: int = 0
    """Processes tiling one slide (reading + encoding); 0: $SLURM_CPUS_PER_TASK, else 1."""
    max_error_fraction: float = 0.2
    """A slide whose unreadable tiles exceed this fraction of its candidates fails (stage read);
    below it, unreadable tiles are skipped and counted."""
    hash_local: bool = True
    """Compute the md5 of local slides for the shard's source_md5 attribute."""
    tissue: TissueConfig = field(default_factory=TissueConfig)
    """Tissue mask and per-tile background filter."""
    download: DownloadConfig = field(default_factory=DownloadConfig)
    """Streaming from the GDC for manifest inputs."""

    def __post_init__(self) -> None:
        if not 16 <= self.tile_size <= 4096:
            raise ValueError(f"tile_size must be in [16, 4096], got {self.tile_size}")
        if self.target_mpp <= 0 or self.assumed_mpp <= 0:
            raise ValueError("target_mpp and assumed_mpp must be > 0")
        if not 1 <= self.jpeg_quality <= 95:
            raise ValueError(f"jpeg_quality must be in [1, 95], got {self.jpeg_quality}")
        if not 1 <= self.block_tiles <= 32:
            raise ValueError(f"block_tiles must be in [1, 32], got {self.block_tiles}")
        if self.workers < 0:
            raise ValueError(f"workers must be ≥ 0, got {self.workers}")
        if not 0.0 <= self.max_error_fraction <= 1.0:
            raise ValueError(f"max_error_fraction must be in [0, 1], got {self.max_error_fraction}")
