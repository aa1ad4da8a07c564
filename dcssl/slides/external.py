"""Per-slide masks from outside (``tile.tissue.external_masks``), e.g. published QC masks for TCGA,
intersected with the computed tissue mask.

A slide ``NAME.svs`` takes ``NAME.geojson`` (or ``.json``: Polygon / MultiPolygon features in
level-0 pixel coordinates, holes honoured) or ``NAME.png`` (covering the whole slide at any
downsample; non-zero = keep; where the PNG has transparency, its opaque part). A candidate tile is kept when
the computed mask covers enough of it *and* its centre lies inside the external mask — one exact
rule, whatever the mask's resolution. A missing, unreadable or malformed mask fails that slide
with the reason in the ledger (the other slides go on; rerunning `tile` retries it).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["ExternalMaskError", "ExternalMask", "find_mask_file", "load_external_mask"]

SUFFIXES = (".geojson", ".json", ".png")


class ExternalMaskError(ValueError):
    """The slide's external mask is missing or cannot be used; the message names the file."""


class ExternalMask:
    """Polygons (level-0 rings, each with its holes) or a bitmap covering the slide."""

    def __init__(self, width0: int, height0: int, polygons=None, bitmap: np.ndarray | None = None):
        self.width0, self.height0 = width0, height0
        self.polygons = polygons or []
        self.bitmap = bitmap

    def contains(self, x0: np.ndarray, y0: np.ndarray) -> np.ndarray:
        """Whether each level-0 point lies inside the mask."""
        points = np.column_stack([x0, y0]).astype(np.float64)
        if self.bitmap is not None:
            h, w = self.bitmap.shape
            rows = np.clip((points[:, 1] * h / self.height0).astype(np.int64), 0, h - 1)
            cols = np.clip((points[:, 0] * w / self.width0).astype(np.int64), 0, w - 1)
            return self.bitmap[rows, cols]
        from matplotlib.path import Path as PolygonPath  # exact point-in-polygon; only when needed

        inside = np.zeros(len(points), dtype=bool)
        for outer, holes in self.polygons:
            here = PolygonPath(outer).contains_points(points)
            for hole in holes:
                here &= ~PolygonPath(hole).contains_points(points)
            inside |= here
        return inside

    def raster(self, shape: tuple[int, int], scale: float) -> np.ndarray:
        """The mask on a grid of ``shape`` whose pixel covers ``scale`` level-0 pixels."""
        if self.bitmap is not None:
            image = Image.fromarray(self.bitmap.astype(np.uint8) * 255)
            return np.asarray(image.resize((shape[1], shape[0]), Image.NEAREST)) > 0
        canvas = Image.new("1", (shape[1], shape[0]), 0)
        draw = ImageDraw.Draw(canvas)
        for outer, holes in self.polygons:
            draw.polygon([tuple(p) for p in (np.asarray(outer) / scale)], fill=1)
            for hole in holes:
                draw.polygon([tuple(p) for p in (np.asarray(hole) / scale)], fill=0)
        return np.asarray(canvas, dtype=bool)


def find_mask_file(folder: str | Path, slide_path: str | Path) -> Path:
    """``folder/NAME.{geojson,json,png}`` for slide ``NAME.ext`` (or ``NAME.ext.geojson`` …)."""
    name = Path(slide_path).name
    for base in (Path(name).stem, name):
        for suffix in SUFFIXES:
            candidate = Path(folder) / f"{base}{suffix}"
            if candidate.is_file():
                return candidate
    raise ExternalMaskError(
        f"no external mask for {name} in {folder} (looked for {Path(name).stem}.geojson, .json, "
        f".png); add it, or leave tile.tissue.external_masks empty"
    )


def _rings(geometry: dict) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    kind, coords = geometry.get("type"), geometry.get("coordinates")
    polygons = [coords] if kind == "Polygon" else coords if kind == "MultiPolygon" else None
    if polygons is None:
        raise ValueError(f"geometry type {kind!r}; only Polygon and MultiPolygon are masks")
    out = []
    for rings in polygons:
        arrays = [np.asarray(r, dtype=np.float64)[:, :2] for r in rings]
        out.append((arrays[0], arrays[1:]))
    return out


def _geometries(document: dict) -> list[dict]:
    if document.get("type") == "FeatureCollection":
        return [f.get("geometry") or {} for f in document.get("features", [])]
    if document.get("type") == "Feature":
        return [document.get("geometry") or {}]
    return [document]


def _load_geojson(path: Path, width0: int, height0: int) -> ExternalMask:
    document = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(document, list):  # QuPath exports a bare list of features
        document = {"type": "FeatureCollection", "features": document}
    polygons = [ring for g in _geometries(document) for ring in _rings(g)]
    if not polygons:
        raise ValueError("no polygons in it")
    return ExternalMask(width0, height0, polygons=polygons)


def _load_png(path: Path, width0: int, height0: int) -> ExternalMask:
    with Image.open(path) as image:
        image.load()
        alpha = np.asarray(image.getchannel("A")) if "A" in image.getbands() else None
        # a transparent-background mask keeps its opaque part; an opaque image keeps non-black
        keep = alpha > 0 if alpha is not None and alpha.min() < 255 else np.asarray(image.convert("L")) > 0
    h, w = keep.shape
    if abs(w / h - width0 / height0) > 0.02 * width0 / height0 + 1 / min(w, h):
        raise ValueError(f"{w}×{h} px does not have the slide's aspect ratio ({width0}×{height0} at level 0)")
    return ExternalMask(width0, height0, bitmap=keep)


def load_external_mask(folder: str | Path, slide_path: str | Path, width0: int, height0: int) -> ExternalMask:
    """The external mask of the slide at ``slide_path``; ExternalMaskError naming the file."""
    path = find_mask_file(folder, slide_path)
    try:
        loader = _load_png if path.suffix == ".png" else _load_geojson
        return loader(path, width0, height0)
    except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
        raise ExternalMaskError(f"external mask {path}: unusable ({err})") from None
