"""The tiling bench's memory and decoder figures: one slide tiled as a job tiles it, and level-0
decode speed of the direct reader against openslide's ``read_region``.

Memory is the whole process tree's: the tiling process (probe, mask, grid, shard writer) and its
pool workers, each one's peak resident set (VmHWM, read from /proc while it lives) summed — an
upper bound on what they held at once, shared library pages counted once per process.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
import uuid
from pathlib import Path

from dcssl.tile.config import TileConfig

__all__ = ["tree_memory", "decode_rates"]


def _tile_once(slide: str, shard: str, cfg: TileConfig, workers: int) -> None:
    from dcssl.tile.worker import tile_slide

    tile_slide(slide, shard, "bench", cfg, workers=workers)


def _children() -> dict[int, list[int]]:
    """Parent pid → child pids, from /proc/*/stat (field 4 is the parent)."""
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                parent = int(handle.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(parent, []).append(int(entry))
    return tree


def _descendants(root: int) -> list[int]:
    tree, found, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(tree.get(pid, []))
    return found


def _hwm_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory(slide: str, cfg: TileConfig, workers: int, out_dir: str) -> dict[str, float]:
    """Tile ``slide`` once in a fresh process with ``workers`` pool workers; peak memory (MB)."""
    shard = str(Path(out_dir) / f"{uuid.uuid4().hex}.h5")
    child = multiprocessing.get_context("spawn").Process(target=_tile_once, args=(slide, shard, cfg, workers))
    start = time.perf_counter()
    child.start()
    peaks: dict[int, int] = {}

    def watch() -> None:
        while child.is_alive():
            for pid in _descendants(child.pid):
                peaks[pid] = max(peaks.get(pid, 0), _hwm_kb(pid))
            time.sleep(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    child.join()
    watcher.join()
    seconds = time.perf_counter() - start
    Path(shard).unlink(missing_ok=True)
    if child.exitcode != 0:
        raise RuntimeError(f"tiling {slide} exited {child.exitcode}")
    main = peaks.get(child.pid, 0)
    others = [kb for pid, kb in peaks.items() if pid != child.pid]
    return {
        "tree_peak_rss_mb": round((main + sum(others)) / 1024, 1),
        "main_peak_rss_mb": round(main / 1024, 1),
        "worker_peak_rss_mb": round(max(others, default=0) / 1024, 1),
        "processes": 1 + len(others),
        "seconds": round(seconds, 1),
    }


def decode_rates(slide: str, window: int = 4096, strip: int = 448) -> dict[str, float] | None:
    """Level-0 megapixels per CPU-second over a centred ``window``² (or the whole level), read in
    strips: the direct reader against openslide. None where the direct reader does not serve it."""
    import openslide

    from dcssl.slides.tifftiles import TiffTilesLevel0
    from dcssl.slides.tissue import region_to_rgb

    with openslide.OpenSlide(slide) as handle:
        direct = TiffTilesLevel0.open(slide, handle)
        if direct is None:
            return None
        width, height = handle.dimensions
        w, h = min(window, width), min(window, height)
        x0, y0 = (width - w) // 2, (height - h) // 2

        def rate(read) -> float:
            begin = time.process_time()
            for y in range(y0, y0 + h, strip):
                read(x0, y, w, min(strip, y0 + h - y))
            return round(w * h / 1e6 / max(time.process_time() - begin, 1e-9), 2)

        ours = rate(direct.read)
        direct.close()
    with openslide.OpenSlide(slide) as fresh:  # its own tile cache starts empty, as ours did
        theirs = rate(lambda x, y, w_, h_: region_to_rgb(fresh.read_region((x, y), 0, (w_, h_))))
    return {"direct_mp_per_cpu_s": ours, "openslide_mp_per_cpu_s": theirs, "ratio": round(ours / theirs, 3)}
