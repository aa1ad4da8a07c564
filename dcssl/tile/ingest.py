"""Pre-tiled image folders → the same store format (public labelled sets come as tile folders).

Labels: ``folders`` (one sub-folder per class, e.g. Kather 2016's ``01_TUMOR/``), ``prefix`` (class
before the first ``-`` or ``_`` of the file name, e.g. NCT-CRC-HE-100K's ``TUM-AACHEHDV.tif``),
``none``, or ``auto`` (folders when there are class sub-folders, else none). Classes are numbered
in sorted name order and kept in the shard attribute ``classes`` (JSON list).

Images are centre-cropped to a square and resized to ``tile_size`` (so every tile has one shape),
written in shards of ``shard_size`` images, each atomically: a re-run skips the shards that exist.
Unreadable image files are skipped, counted, and named in the log.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, UnidentifiedImageError

from dcssl.paths import RunPaths
from dcssl.slides.tissue import background_fraction
from dcssl.store import ShardWriter, append_ledger, build_manifest, encode_jpeg, shard_name
from dcssl.tile.config import TileConfig

__all__ = ["IngestError", "find_images", "ingest_folder", "IMAGE_SUFFIXES"]

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp"})
LabelMode = Literal["auto", "folders", "prefix", "none"]


class IngestError(ValueError):
    """The folder cannot be ingested; the message names it and the fix."""


def find_images(folder: Path, labels: LabelMode) -> tuple[list[Path], list[int] | None, list[str]]:
    """(image files in a stable order, their class numbers or None, class names)."""
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file()
        and p.suffix.lower() in IMAGE_SUFFIXES
        and not any(s.startswith(".") for s in p.relative_to(folder).parts)
    )
    if not files:
        raise IngestError(
            f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}); pass "
            "a folder of tiles, flat or with one sub-folder per class"
        )
    nested = any(p.parent != folder for p in files)
    mode = ("folders" if nested else "none") if labels == "auto" else labels
    if mode == "none":
        return files, None, []
    if mode == "folders":
        if not nested:
            raise IngestError(f"{folder}: no class sub-folders; use labels=prefix or labels=none")
        names = [p.relative_to(folder).parts[0] for p in files]
    else:
        names = [re.split(r"[-_]", p.name, maxsplit=1)[0] for p in files]
    classes = sorted(set(names))
    number = {c: i for i, c in enumerate(classes)}
    return files, [number[n] for n in names], classes


def _load(path: Path, size: int) -> np.ndarray:
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    w, h = rgb.size
    side = min(w, h)
    if w != h:  # centre crop: a tile is square
        left, top = (w - side) // 2, (h - side) // 2
        rgb = rgb.crop((left, top, left + side, top + side))
    if side != size:
        rgb = rgb.resize((size, size), Image.BILINEAR)
    return np.asarray(rgb)


def _write_shard(
    path: Path,
    name: str,
    files: list[Path],
    labels: list[int] | None,
    classes: list[str],
    cfg: TileConfig,
    folder: Path,
) -> tuple[int, list[str]]:
    tiles, keep_labels, bad = [], [], []
    for n, file in enumerate(files):
        try:
            tiles.append(_load(file, cfg.tile_size))
            keep_labels.append(labels[n] if labels is not None else -1)
        except (UnidentifiedImageError, OSError, ValueError) as err:
            bad.append(f"{file.relative_to(folder)} ({type(err).__name__})")
    stack = np.stack(tiles) if tiles else np.zeros((0, cfg.tile_size, cfg.tile_size, 3), np.uint8)
    tissue = 1.0 - background_fraction(stack, cfg.tissue.white_level, cfg.tissue.black_level)
    encoded = [encode_jpeg(t, cfg.jpeg_quality) for t in stack] if cfg.encoding == "jpeg" else stack
    attrs = {"pretiled": True, "classes": json.dumps(classes), "source_folder": str(folder)}
    with ShardWriter(
        path,
        slide_id=name,
        tile_size=cfg.tile_size,
        encoding=cfg.encoding,
        with_labels=labels is not None,
        attrs=attrs,
    ) as writer:
        # pre-tiled images have no position on a slide: coords are (0, 0)
        writer.append(
            encoded,
            np.zeros((len(stack), 2), np.int64),
            tissue.astype(np.float32),
            np.asarray(keep_labels, np.int64) if labels is not None else None,
        )
    return len(stack), bad


def ingest_folder(
    folder: str | Path,
    store_root: str | Path,
    cfg: TileConfig,
    labels: LabelMode = "auto",
    name: str | None = None,
    shard_size: int = 10_000,
) -> dict:
    """Ingest ``folder`` into ``store_root`` and rebuild its manifest; a summary dict."""
    folder, root = Path(folder), Path(store_root)
    if not folder.is_dir():
        raise IngestError(f"{folder}: not a folder; pass a folder of image tiles")
    if shard_size < 1:
        raise IngestError(f"shard_size must be ≥ 1, got {shard_size}")
    name = name or folder.resolve().name
    files, numbers, classes = find_images(folder, labels)
    written = skipped_files = 0
    for start in range(0, len(files), shard_size):
        part = f"{name}-{start // shard_size:05d}"
        path = root / "shards" / shard_name(part)
        if path.is_file():
            continue
        chunk = files[start : start + shard_size]
        chunk_labels = numbers[start : start + shard_size] if numbers is not None else None
        n, bad = _write_shard(path, part, chunk, chunk_labels, classes, cfg, folder)
        for item in bad:
            log.warning("%s: unreadable image skipped: %s", part, item)
        written += n
        skipped_files += len(bad)
        append_ledger(
            root,
            {
                "slide": part,
                "status": "ok",
                "stage": "ingest",
                "tiles": n,
                "errors": len(bad),
                "reason": f"{len(bad)} unreadable images skipped" if bad else "",
                "source": str(folder),
            },
        )
    if RunPaths(root.parent).slide_list.is_file() and root.name == "store":
        from dcssl.tile.run import finalize  # a run's store: keep the slide list's order first

        finalize(root.parent)
    else:
        build_manifest(root)
    return {"images": len(files), "written": written, "unreadable": skipped_files, "classes": classes}
