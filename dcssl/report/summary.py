"""Per-cluster figures for the atlas: slides spanned, top slides, purity, parents, artefact flags."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dcssl.cluster.nmi import nmi
from dcssl.report.config import ReportConfig

__all__ = ["Crosstab", "crosstab", "ClusterCard", "flags", "site_of", "chance_nmi"]


def chance_nmi(sizes: np.ndarray, draws: int = 5, seed: int = 0) -> float:
    """Mean NMI of two unrelated labellings with these cluster sizes (one shuffled against the
    other): what NMI(t-1, t) reads with no learning at all. Far from 0 when clusters are few tiles,
    ≈ 0 for large ones. O(draws × tiles): called only for small runs."""
    labels = np.repeat(np.arange(len(sizes)), np.asarray(sizes, dtype=np.int64))
    rng = np.random.default_rng(seed)
    return float(np.mean([nmi(labels, rng.permutation(labels)) for _ in range(draws)]))


@dataclass
class Crosstab:
    """For each value of ``a``: its most frequent ``b`` values with counts, and how many distinct."""

    top: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    distinct: dict[int, int] = field(default_factory=dict)


def crosstab(a: np.ndarray, b: np.ndarray, top: int = 3) -> Crosstab:
    """One sort of the (a, b) pairs where both are ≥ 0 (O(n log n), no k×k table)."""
    ok = (a >= 0) & (b >= 0)
    width = int(b.max(initial=0)) + 1
    keys, counts = np.unique(a[ok].astype(np.int64) * width + b[ok], return_counts=True)
    ka, kb = keys // width, keys % width
    order = np.lexsort((-counts, ka))
    ka, kb, counts = ka[order], kb[order], counts[order]
    starts = np.flatnonzero(np.r_[True, np.diff(ka) != 0])
    ends = np.r_[starts[1:], len(ka)]
    out = Crosstab()
    for lo, hi in zip(starts, ends):
        c = int(ka[lo])
        out.top[c] = [(int(kb[j]), int(counts[j])) for j in range(lo, min(hi, lo + top))]
        out.distinct[c] = int(hi - lo)
    return out


@dataclass
class ClusterCard:
    cluster: int
    size: int
    slides: int
    """Distinct slides its tiles come from."""
    top_slides: list[tuple[str, int]]
    picks: np.ndarray
    """Global indices shown on its page, nearest to the centre first."""
    purity: float | None = None
    majority: str | None = None
    parents: list[tuple[int, float]] = field(default_factory=list)
    """(cluster in the previous epoch, share of this cluster's tiles that were there)."""
    flags: list[str] = field(default_factory=list)
    sites: list[tuple[str, int]] = field(default_factory=list)
    page: int = 1
    """Atlas page the card is on."""


def flags(qc: dict[str, np.ndarray], cfg: ReportConfig) -> list[str]:
    """Artefact hints from the shown tiles' QC figures (medians); never acted on automatically."""
    out = []
    median = {name: float(np.nanmedian(v)) if np.isfinite(v).any() else None for name, v in qc.items()}
    if median["background"] is not None and median["background"] > cfg.flag_background:
        out.append(f"background {median['background']:.0%}")
    if median["blur"] is not None and median["blur"] < cfg.flag_blur:
        out.append(f"blurred (Laplacian var {median['blur']:.0f})")
    if median["pen"] is not None and median["pen"] > cfg.flag_pen:
        out.append(f"pen ink {median['pen']:.0%}")
    return out


def site_of(slide_id: str) -> str | None:
    """The tissue source site of a TCGA barcode (TCGA-<site>-<patient>…), else None."""
    parts = slide_id.split("-")
    return f"TCGA-{parts[1]}" if len(parts) >= 3 and parts[0].upper() == "TCGA" else None
