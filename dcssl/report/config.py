"""Settings of the report: section ``report`` of ``RUN_DIR/config.yaml``."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ReportConfig"]


@dataclass
class ReportConfig:
    """The static HTML report: atlas paging, montages, artefact flags."""

    cards_per_page: int = 200
    """Cluster cards per atlas page (k = 10,000 is 50 pages)."""
    card_tiles: int = 8
    """Tiles in a card's montage: the nearest to the cluster centre, then outward."""
    page_tiles: int = 24
    """Tiles on a cluster's own page (the card's tiles are a subset of these)."""
    bins: int = 6
    """Equal-frequency distance bins the tiles are drawn from (the ``curate`` rule)."""
    tile_px: int = 64
    """Side of a tile in the montages, in pixels."""
    seed: int = 0
    """Seed of the draws within bins."""
    slides_per_page: int = 50
    """Slide maps per slide page."""
    flag_background: float = 0.35
    """Flag a cluster as a candidate artefact when its shown tiles' median background fraction is
    above this (background left by the mask)."""
    flag_blur: float = 150.0
    """… or their median variance of the Laplacian is below this (out of focus)."""
    flag_pen: float = 0.1
    """… or their median fraction of pen-ink pixels is above this. Flags never exclude by themselves."""

    def __post_init__(self) -> None:
        for name in ("cards_per_page", "card_tiles", "page_tiles", "bins", "tile_px", "slides_per_page"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.card_tiles > self.page_tiles:
            raise ValueError(f"card_tiles ({self.card_tiles}) must be ≤ page_tiles ({self.page_tiles})")
        if not 16 <= self.tile_px <= 256:
            raise ValueError(f"tile_px must be in [16, 256], got {self.tile_px}")
        for name in ("flag_background", "flag_pen"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.flag_blur < 0:
            raise ValueError(f"flag_blur must be ≥ 0, got {self.flag_blur}")
