"""Settings of reading slides: the tissue mask and per-tile filter, streaming from the GDC.

They live with the slide readers (``slides/``) that use them; section ``tile`` of the run config
holds them as ``tile.tissue`` and ``tile.download``.
"""

from __future__ import annotations

import ipaddress
import urllib.parse
from dataclasses import dataclass

__all__ = ["TissueConfig", "DownloadConfig", "is_secure_url"]


@dataclass
class TissueConfig:
    """Which tiles count as tissue: a coarse mask, then each tile's own pixels."""

    mask_mpp: float = 8.0
    """Resolution of the tissue mask in µm/px (8 ≈ a 16× downsample of a 20× scan)."""
    max_mask_megapixels: float = 16.0
    """The mask never has more pixels than this (millions): a larger slide's mask is computed at
    the coarser µm/px that fits, so tiling memory does not grow with the slide's area (16 MP holds
    a 40× slide of 16 gigapixels, a 20× one of 4, at 8 µm/px)."""
    min_saturation: int = 15
    """Floor under the Otsu threshold on HSV saturation (0-255): a blank slide finds no tissue
    instead of promoting scanner noise to tissue."""
    median_px: int = 5
    """Median filter width (mask pixels) applied to the saturation before thresholding."""
    min_component_mm2: float = 0.01
    """Tissue specks smaller than this area are dropped from the mask (dust, debris)."""
    fill_holes: bool = True
    """Fill holes inside tissue in the mask (lumen, fat); the per-tile filter still drops white tiles."""
    min_mask_coverage: float = 0.25
    """A tile is a candidate when at least this fraction of its footprint lies in the mask."""
    max_background: float = 0.5
    """Drop a tile when more than this fraction of its pixels is background."""
    white_level: int = 220
    """A pixel whose darkest channel is at least this bright (0-255) is background (near-white)."""
    black_level: int = 15
    """A pixel whose brightest channel is at most this (0-255) is background (blank / out of scan)."""
    external_masks: str = ""
    """Folder of per-slide masks intersected with the computed one (e.g. published QC masks):
    NAME.geojson (Polygon/MultiPolygon, level-0 pixels) or NAME.png (whole slide, any downsample,
    non-zero = keep) for slide NAME.svs; a tile is kept only if its centre lies inside. A slide
    whose mask is missing or unusable fails with the reason in the ledger. Empty: none."""

    def __post_init__(self) -> None:
        if self.mask_mpp <= 0:
            raise ValueError(f"mask_mpp must be > 0, got {self.mask_mpp}")
        if self.max_mask_megapixels <= 0:
            raise ValueError(f"max_mask_megapixels must be > 0, got {self.max_mask_megapixels}")
        for name in ("min_mask_coverage", "max_background"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("min_saturation", "white_level", "black_level"):
            if not 0 <= getattr(self, name) <= 255:
                raise ValueError(f"{name} must be in [0, 255], got {getattr(self, name)}")
        if self.median_px < 1 or self.median_px % 2 == 0:
            raise ValueError(f"median_px must be a positive odd number, got {self.median_px}")
        if self.min_component_mm2 < 0:
            raise ValueError(f"min_component_mm2 must be ≥ 0, got {self.min_component_mm2}")


def is_secure_url(url: str) -> bool:
    """https, or http to this machine (a loopback test server)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "https":
        return True
    host = parts.hostname or ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


@dataclass
class DownloadConfig:
    """Streaming slides from the GDC (or any server with the same ``/data/<id>`` layout)."""

    base_url: str = "https://api.gdc.cancer.gov"
    """Server root; a slide is fetched from ``<base_url>/data/<file id>``."""
    token_file: str | None = None
    """File holding a GDC token for controlled-access slides (sent as X-Auth-Token, never logged)."""
    scratch_dir: str | None = None
    """Node-local folder for downloads (None: $SLURM_TMPDIR, else $TMPDIR, else /tmp)."""
    scratch_budget_gb: float = 20.0
    """A task never holds more than this many GB of downloaded slides; larger slides are refused."""
    retries: int = 5
    """Attempts per slide for transient errors (connection drops, 5xx, 429, md5 mismatch)."""
    backoff_s: float = 2.0
    """First wait between attempts; doubled after each failed attempt (capped at 60 s)."""
    timeout_s: float = 60.0
    """Socket timeout for connecting and for each read."""
    chunk_mb: float = 4.0
    """Bytes read per chunk while streaming to disk."""
    allow_insecure: bool = False
    """Allow a plain-http base_url (or redirect) to a host other than loopback; the token and the
    slides then cross the network unencrypted."""

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {self.base_url!r}")
        if not (self.allow_insecure or is_secure_url(self.base_url)):
            raise ValueError(
                f"base_url {self.base_url!r} is plain http to a non-loopback host: use https, "
                "or set tile.download.allow_insecure=true if that network is trusted"
            )
        if self.scratch_budget_gb <= 0:
            raise ValueError(f"scratch_budget_gb must be > 0, got {self.scratch_budget_gb}")
        if self.retries < 1:
            raise ValueError(f"retries must be ≥ 1, got {self.retries}")
        if self.backoff_s < 0 or self.timeout_s <= 0 or self.chunk_mb <= 0:
            raise ValueError("backoff_s must be ≥ 0, timeout_s and chunk_mb > 0")
