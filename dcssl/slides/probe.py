"""What a slide is: level-0 resolution (µm/px), pyramid levels, and which level to read tiles from.

MPP comes from ``openslide.mpp-x``; else from the objective power (10 µm / power: 20× → 0.5);
else the configured policy assumes a value or refuses the slide. Tiles are read from the coarsest
level that is still at least as fine as the target, then resized — never from level 0 when a
closer level exists (the classic 4-5× too many tiles), never enlarged unless allowed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import openslide

__all__ = ["ProbeError", "SlideProbe", "probe_slide", "resolve_mpp", "choose_level"]

_LEVEL_SLACK = 1.02  # a level ≤ 2 % coarser than the target still counts as "at least as fine"


class ProbeError(ValueError):
    """The slide cannot be tiled as configured; the message says why and what to change."""


@dataclass(frozen=True)
class SlideProbe:
    """Facts about an opened slide that decide the tile grid."""

    width: int
    height: int
    mpp: float
    """Level-0 µm/px."""
    mpp_source: str
    """openslide.mpp-x | objective-power | assumed."""
    level_downsamples: tuple[float, ...]
    level_dimensions: tuple[tuple[int, int], ...]
    vendor: str

    def level_mpp(self, level: int) -> float:
        return self.mpp * self.level_downsamples[level]


def resolve_mpp(properties, policy: str, assumed: float) -> tuple[float, str]:
    """(level-0 µm/px, where it came from) from openslide properties and the configured policy."""
    for key in ("openslide.mpp-x", "openslide.mpp-y"):
        try:
            value = float(properties.get(key, "nan"))
        except ValueError:
            continue
        if math.isfinite(value) and value > 0:
            return value, "openslide.mpp-x"
    try:
        power = float(properties.get("openslide.objective-power", "nan"))
    except ValueError:
        power = float("nan")
    if math.isfinite(power) and power > 0:
        return 10.0 / power, "objective-power"
    if policy == "assume":
        return assumed, "assumed"
    raise ProbeError(
        "no resolution metadata (neither openslide.mpp-x nor objective power); set "
        "tile.mpp_policy=assume and tile.assumed_mpp=<µm/px> to tile it anyway"
    )


def probe_slide(slide: openslide.AbstractSlide, policy: str = "refuse", assumed: float = 0.25) -> SlideProbe:
    mpp, source = resolve_mpp(slide.properties, policy, assumed)
    width, height = slide.dimensions
    return SlideProbe(
        width=width,
        height=height,
        mpp=mpp,
        mpp_source=source,
        level_downsamples=tuple(float(d) for d in slide.level_downsamples),
        level_dimensions=tuple(tuple(d) for d in slide.level_dimensions),
        vendor=str(slide.properties.get("openslide.vendor", "")),
    )


def choose_level(probe: SlideProbe, target_mpp: float, allow_upsample: bool = False) -> int:
    """The coarsest level whose resolution is at least as fine as ``target_mpp``."""
    fine_enough = [
        lvl
        for lvl in range(len(probe.level_downsamples))
        if probe.level_mpp(lvl) <= target_mpp * _LEVEL_SLACK
    ]
    if fine_enough:
        return max(fine_enough, key=probe.level_mpp)
    if not allow_upsample:
        raise ProbeError(
            f"scan resolution {probe.mpp:.3f} µm/px ({probe.mpp_source}) is coarser "
            f"than the target {target_mpp} µm/px; set tile.allow_upsample=true or "
            "a larger tile.target_mpp"
        )
    return 0


def coarsest_level_within(probe: SlideProbe, mpp: float) -> int:
    """The coarsest level no coarser than ``mpp`` (for the tissue mask); level 0 if none is."""
    fine_enough = [
        lvl for lvl in range(len(probe.level_downsamples)) if probe.level_mpp(lvl) <= mpp * _LEVEL_SLACK
    ]
    return max(fine_enough, key=probe.level_mpp) if fine_enough else 0
