"""Tile one slide into one shard: open → probe → tissue mask → read blocks → write.

Every failure is a ``SlideFailure(stage, reason)`` with a one-line reason for the ledger; the
shard is written under a temporary name and appears only when complete (kill -9 leaves a
``.<name>.*.tmp`` file that readers ignore and the next attempt removes).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openslide

from dcssl.slides.external import ExternalMaskError, load_external_mask
from dcssl.slides.grid import Block, TileGrid, group_blocks, make_grid
from dcssl.slides.probe import ProbeError, SlideProbe, choose_level, probe_slide
from dcssl.slides.tissue import TissueMask, tissue_mask
from dcssl.store import ShardWriter
from dcssl.tile.blocks import BlockReader, BlockResult, init_pool_reader, process_in_pool
from dcssl.tile.config import TileConfig
from dcssl.tile.qc import overview_images

__all__ = ["SlideFailure", "SlideResult", "tile_slide", "effective_workers", "plan_slide"]

log = logging.getLogger(__name__)
_PROGRESS_EVERY_S = 30.0


class SlideFailure(RuntimeError):
    """A slide that cannot be tiled: ``stage`` (open | probe | tissue | read | write) and why."""

    def __init__(self, stage: str, reason: str):
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason


@dataclass
class SlideResult:
    slide_id: str
    tiles: int
    """Tiles written."""
    candidates: int
    """Tiles under the tissue mask (before the per-tile background filter)."""
    errors: int
    """Candidate tiles that could not be read (skipped)."""
    level: int
    mpp: float
    mpp_source: str
    seconds: float
    note: str = ""
    """Why nothing or little was written (e.g. no tissue found), empty otherwise."""


def effective_workers(cfg: TileConfig) -> int:
    """Processes per slide: the configured number, else the task's CPUs under SLURM, else 1."""
    if cfg.workers:
        return cfg.workers
    try:
        return max(1, int(os.environ.get("SLURM_CPUS_PER_TASK", "1")))
    except ValueError:
        return 1


def _open(path: str) -> openslide.OpenSlide:
    if not Path(path).is_file():
        raise SlideFailure("open", f"{path}: file not found")
    try:
        return openslide.OpenSlide(path)
    except openslide.OpenSlideUnsupportedFormatError:
        raise SlideFailure(
            "open",
            "not a slide format openslide can read (corrupt, truncated or "
            "not a whole-slide image; plain images go through `dcssl.launch "
            "ingest`)",
        ) from None
    except openslide.OpenSlideError as err:
        raise SlideFailure("open", f"openslide cannot open it: {err}") from None
    except OSError as err:
        raise SlideFailure("open", f"cannot read the file: {err.strerror or err}") from None


def _inside_external(
    path: str, probe: SlideProbe, mask: TissueMask, grid: TileGrid, ij: np.ndarray, folder: str
) -> np.ndarray:
    """Which candidates have their centre inside the slide's external mask; the overview mask
    becomes the intersection (what the slide map outlines)."""
    try:
        external = load_external_mask(folder, path, probe.width, probe.height)
    except ExternalMaskError as err:
        raise SlideFailure("mask", str(err)) from None
    mask.mask = mask.mask & external.raster(mask.mask.shape, mask.scale)
    centre = grid.coords(ij) + grid.step0 / 2
    return external.contains(centre[:, 0], centre[:, 1])


def plan_slide(
    slide: openslide.OpenSlide, cfg: TileConfig, path: str = ""
) -> tuple[SlideProbe, TileGrid, list[Block], TissueMask]:
    """Probe, mask and grid: the blocks of candidate tiles to read (and the mask). ``path``
    names the slide's external mask when ``tile.tissue.external_masks`` is set."""
    try:
        probe = probe_slide(slide, cfg.mpp_policy, cfg.assumed_mpp)
        level = choose_level(probe, cfg.target_mpp, cfg.allow_upsample)
    except ProbeError as err:
        raise SlideFailure("probe", str(err)) from None
    grid = make_grid(probe, level, cfg.tile_size, cfg.target_mpp)
    try:
        mask = tissue_mask(slide, probe, cfg.tissue)
    except openslide.OpenSlideError as err:
        raise SlideFailure("tissue", f"cannot read the low-resolution view: {err}") from None
    ij = grid.all_tiles()
    xy = grid.coords(ij)
    coverage = mask.coverage(xy[:, 0], xy[:, 1], grid.step0)
    candidates = ij[coverage >= cfg.tissue.min_mask_coverage] if len(ij) else ij
    if cfg.tissue.external_masks and len(candidates):
        folder = cfg.tissue.external_masks
        candidates = candidates[_inside_external(path, probe, mask, grid, candidates, folder)]
    return probe, grid, group_blocks(grid, candidates, cfg.block_tiles), mask


def _results_inline(
    path: str, grid: TileGrid, cfg: TileConfig, blocks: list[Block], slide: openslide.OpenSlide
) -> Iterator[BlockResult]:
    reader = BlockReader(path, grid, cfg, slide)  # reuses the planning handle: no second open
    try:
        for block in blocks:
            yield reader.process(block)
    finally:
        reader.close()


def _results_pooled(
    path: str, grid: TileGrid, cfg: TileConfig, blocks: list[Block], workers: int
) -> Iterator[BlockResult]:
    """Blocks processed by ``workers`` processes, yielded in order; at most 2 per worker in
    flight so memory stays bounded whatever the slide size."""
    # spawn: openslide/glib state must not be forked from a process that already opened a slide
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=init_pool_reader, initargs=(path, grid, cfg)
    ) as pool:
        pending: deque[Future] = deque()
        queue = iter(blocks)
        for block in queue:
            pending.append(pool.submit(process_in_pool, block))
            if len(pending) >= 2 * workers:
                break
        while pending:
            result = pending.popleft().result()
            nxt = next(queue, None)
            if nxt is not None:
                pending.append(pool.submit(process_in_pool, nxt))
            yield result


def _log_progress(slide_id: str, done: int, total: int, written: int, start: float) -> None:
    elapsed = time.monotonic() - start
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else float("nan")
    log.info(
        "%s: %d/%d candidate tiles, %d written, %.0f tiles/s, ETA %.0f s",
        slide_id,
        done,
        total,
        written,
        rate,
        eta,
    )


def tile_slide(
    path: str | Path,
    shard_path: str | Path,
    slide_id: str,
    cfg: TileConfig,
    source_md5: str = "",
    workers: int = 1,
) -> SlideResult:
    """Tile ``path`` into ``shard_path``; raises SlideFailure with the stage and reason."""
    start = time.monotonic()
    path = str(path)
    slide = _open(path)
    try:
        return _tile_open_slide(slide, path, Path(shard_path), slide_id, cfg, source_md5, workers, start)
    finally:
        slide.close()


def _put_overview(writer: ShardWriter, mask: TissueMask, dropped: list[np.ndarray]) -> None:
    """The slide's thumbnail, mask and dropped candidates, so the report never needs the slide."""
    thumbnail, mask_png, scale = overview_images(mask.view, mask.mask, mask.scale)
    writer.put("overview/thumbnail", thumbnail, scale=scale)
    writer.put("overview/mask", mask_png, scale=scale)
    writer.put("overview/dropped", np.concatenate(dropped) if dropped else np.zeros((0, 2), np.int64))


def _note(grid: TileGrid, total: int, errors: int) -> str:
    if errors:
        return f"{errors} unreadable tiles skipped"
    if grid.nx * grid.ny == 0:
        return "slide is smaller than one tile"
    return "no tissue found" if total == 0 else ""


def _tile_open_slide(
    slide: openslide.OpenSlide,
    path: str,
    shard_path: Path,
    slide_id: str,
    cfg: TileConfig,
    source_md5: str,
    workers: int,
    start: float,
) -> SlideResult:
    probe, grid, blocks, mask = plan_slide(slide, cfg, path)
    total = sum(len(b.tiles) for b in blocks)
    log.info(
        "%s: %dx%d px, %.3f µm/px (%s), level %d, %d candidate tiles in %d blocks",
        slide_id,
        probe.width,
        probe.height,
        probe.mpp,
        probe.mpp_source,
        grid.level,
        total,
        len(blocks),
    )
    attrs = dict(
        mpp_source=probe.mpp_source,
        target_mpp=cfg.target_mpp,
        step0=grid.step0,
        source_path=path,
        vendor=probe.vendor,
    )
    errors = done = 0
    last_log = time.monotonic()
    try:
        with ShardWriter(
            shard_path,
            slide_id=slide_id,
            tile_size=cfg.tile_size,
            encoding=cfg.encoding,
            mpp=probe.mpp,
            level=grid.level,
            source_md5=source_md5,
            qc_columns=("blur", "pen"),
            attrs=attrs,
        ) as writer:
            dropped = []
            # a pool costs ~1 s of process start-up: worth it only with blocks to share out
            pooled = workers > 1 and len(blocks) >= 2 * workers
            results = (
                _results_pooled(path, grid, cfg, blocks, workers)
                if pooled
                else _results_inline(path, grid, cfg, blocks, slide)
            )
            for result in results:
                writer.append(result.tiles, result.coords, result.tissue, qc=result.qc)
                dropped.append(result.dropped)
                errors += result.errors
                done += result.candidates
                if time.monotonic() - last_log > _PROGRESS_EVERY_S:
                    _log_progress(slide_id, done, total, writer.n_tiles, start)
                    last_log = time.monotonic()
            if total and errors > cfg.max_error_fraction * total:
                raise SlideFailure(
                    "read",
                    f"{errors} of {total} tiles unreadable (over "
                    f"tile.max_error_fraction={cfg.max_error_fraction}); the file "
                    "is probably corrupt: download it again",
                )
            _put_overview(writer, mask, dropped)
            written = writer.n_tiles
    except openslide.OpenSlideError as err:  # the slide failed in a way a reopen did not fix
        raise SlideFailure("read", f"openslide failed while reading tiles: {err}") from None
    except BrokenProcessPool:
        raise SlideFailure(
            "read",
            "a tiling process died while reading (a crash in the slide "
            "decoder or out of memory); try tile.workers=1",
        ) from None
    except OSError as err:
        raise SlideFailure("write", f"cannot write {shard_path}: {err}") from None
    return SlideResult(
        slide_id=slide_id,
        tiles=written,
        candidates=total,
        errors=errors,
        level=grid.level,
        mpp=probe.mpp,
        mpp_source=probe.mpp_source,
        seconds=time.monotonic() - start,
        note=_note(grid, total, errors),
    )
