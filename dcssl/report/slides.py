"""The slide pages: every slide of the run — tiled (a map), kept no tiles, or failed (the reason)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from dcssl.report.pages import slides_page
from dcssl.report.slidemap import draw_slide_map, read_overview
from dcssl.store import Store, latest_attempts

__all__ = ["slide_entries", "write_slide_pages"]


def slide_entries(run_dir: Path, store: Store, labels: np.ndarray) -> list[dict]:
    """One entry per slide: the store's shards in index order, then slides whose latest attempt
    failed (no shard)."""
    latest = latest_attempts(store.root)
    entries, seen = [], set()
    for i, info in enumerate(store.shards):
        seen.add(info.slide_id)
        note = latest.get(info.slide_id, {}).get("reason", "")
        entry = {"slide": info.slide_id, "shard": i, "tiles": info.n_tiles, "reason": note}
        entry["status"] = "tiled" if info.n_tiles else "no tiles"
        if not info.n_tiles:
            entry["reason"] = f"kept 0 tiles: {note or 'no tissue tile passed the filters'}"
        entries.append(entry)
    for slide, record in latest.items():
        if slide not in seen and record.get("status") == "failed":
            reason = f"failed at {record.get('stage', '?')}: {record.get('reason', '')}"
            entries.append({"slide": slide, "status": "failed", "tiles": 0, "reason": reason})
    return entries


def _draw(store: Store, entry: dict, labels: np.ndarray, out: Path) -> None:
    """Draw the entry's map (when its shard has an overview) and its cluster composition."""
    i = entry["shard"]
    lo, hi = int(store.offsets[i]), int(store.offsets[i + 1])
    mine = labels[lo:hi]
    with store.open_shard(i) as f:
        overview = read_overview(f)
        if overview is None:
            return
        thumb, mask, scale = overview
        image = draw_slide_map(
            thumb, mask, scale, f["coords"][:], mine, float(f.attrs.get("step0", 0)), f["overview/dropped"][:]
        )
        entry["dropped"] = int(f["overview/dropped"].shape[0])
    name = f"slide-{i}.png"
    image.save(out / "img" / name, compress_level=3)
    counts = np.bincount(mine[mine >= 0]) if (mine >= 0).any() else np.zeros(0, dtype=np.int64)
    top = np.argsort(-counts, kind="stable")[: min(12, np.count_nonzero(counts))]
    entry["composition"] = [(int(c), int(counts[c])) for c in top]
    entry["map"] = name


def write_slide_pages(
    out: Path, entries: list[dict], epoch: int, per_page: int, store: Store, labels: np.ndarray
) -> None:
    pages = max(1, math.ceil(len(entries) / per_page))
    for p in range(pages):
        chunk = entries[p * per_page : (p + 1) * per_page]
        for entry in chunk:
            if "shard" in entry:
                _draw(store, entry, labels, out)
        (out / f"slides-{p + 1:04d}.html").write_text(slides_page(chunk, p + 1, pages, epoch))
