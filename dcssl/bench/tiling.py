"""``python -m dcssl.bench tiling [--slide PATH | --slide-size 40000] --workers N``: tiles/s, memory.

Three tilers on the same slide with the same number of worker processes, each tiling copies of
the slide (one slide per process) until the figure has lasted ``--min-seconds``:

- dcssl: tissue mask at low resolution, blocks of 8×8 tiles per ``read_region``, JPEG, HDF5 shard;
- naive: one ``read_region`` per grid tile at the same level, the same background filter, JPEG
  encode, the same HDF5 shard writer (the classic per-tile loop);
- hs2p (PyPI): ``tile_slides(..., save_tiles=True)`` with the same spacing, tile size and workers
  (its own tissue segmentation and JPEG tar output); null when it cannot be imported or run.

``--slide-size 40000`` (or ``100000x80000``) tiles a TCGA-like synthetic 40× slide instead: an
Aperio JPEG pyramid (1, 4, 16) written tile by tile to the temporary folder, ≈ 42 % tissue.

Memory: the slide tiled once as a job tiles it (one process, ``--workers`` pool workers), the
tree's peak resident sets summed (``tree_peak_rss_mb``); above ``--max-rss-mb`` the bench exits 1
— the tiling memory bound is asserted here, not in the tests. ``--memory-only`` skips the tiles/s
figures (a 100 k × 80 k slide's naive pass alone takes many minutes). Decode: level-0 megapixels
per CPU-second of the direct JPEG / JPEG 2000 reader against openslide's ``read_region``.

The last line is one JSON object: tiles_per_s, ratio_vs_naive, ratio_vs_hs2p, tree_peak_rss_mb,
the decode rates, and the details.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import resource
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import replace
from pathlib import Path

import numpy as np

from dcssl.tile.config import TileConfig

__all__ = ["main", "naive_tile", "dcssl_tile"]


def dcssl_tile(slide: str, out_dir: str, cfg: TileConfig) -> int:
    from dcssl.tile.worker import tile_slide

    shard = Path(out_dir) / f"{uuid.uuid4().hex}.h5"
    result = tile_slide(slide, shard, "bench", cfg, workers=1)
    shard.unlink()
    return result.tiles


def naive_tile(slide: str, out_dir: str, cfg: TileConfig) -> int:
    """One read_region per grid tile at the chosen level, background filter, encode, write."""
    import openslide
    from PIL import Image

    from dcssl.slides.grid import make_grid
    from dcssl.slides.probe import choose_level, probe_slide
    from dcssl.slides.tissue import background_fraction, rgba_to_rgb
    from dcssl.store import ShardWriter, encode_jpeg

    shard = Path(out_dir) / f"{uuid.uuid4().hex}.h5"
    with openslide.OpenSlide(slide) as handle:
        probe = probe_slide(handle, cfg.mpp_policy, cfg.assumed_mpp)
        grid = make_grid(probe, choose_level(probe, cfg.target_mpp), cfg.tile_size, cfg.target_mpp)
        size = math.ceil(grid.read_size)
        with ShardWriter(shard, slide_id="naive", tile_size=cfg.tile_size) as writer:
            for i, j in grid.all_tiles():
                rgb = rgba_to_rgb(
                    np.asarray(
                        handle.read_region(
                            (int(i) * grid.step0, int(j) * grid.step0), grid.level, (size, size)
                        )
                    )
                )
                if grid.needs_resize:
                    rgb = np.asarray(Image.fromarray(rgb).resize((cfg.tile_size,) * 2, Image.BILINEAR))
                tile = rgb[: cfg.tile_size, : cfg.tile_size]
                background = background_fraction(tile[None], cfg.tissue.white_level, cfg.tissue.black_level)[
                    0
                ]
                if background <= cfg.tissue.max_background:
                    writer.append(
                        [encode_jpeg(tile, cfg.jpeg_quality)],
                        grid.coords(np.array([[i, j]])),
                        np.array([1 - background]),
                    )
            tiles = writer.n_tiles
    shard.unlink()
    return tiles


def _run_pool(
    fn: Callable[[str, str, TileConfig], int],
    slide: str,
    cfg: TileConfig,
    workers: int,
    min_seconds: float,
    out_dir: str,
    warm_up: bool = True,
) -> tuple[float, int, int]:
    """(tiles/s, tiles per pass, passes): workers kept busy until min_seconds have passed; the
    warm-up pass (imports, page cache) is skipped for a slide just written (cached, and long)."""
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        per_pass = (
            {f.result() for f in [pool.submit(fn, slide, out_dir, cfg) for _ in range(workers)]}
            if warm_up
            else {0}
        )
        start = time.perf_counter()
        running = {pool.submit(fn, slide, out_dir, cfg) for _ in range(workers)}
        tiles = passes = 0
        while running:
            done, running = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                tiles += future.result()
                per_pass.add(future.result())
                passes += 1
                if time.perf_counter() - start < min_seconds:
                    running.add(pool.submit(fn, slide, out_dir, cfg))
        elapsed = time.perf_counter() - start
    return tiles / elapsed, max(per_pass), passes


def _hs2p(
    slide: str, workers: int, min_seconds: float, out_dir: str, cfg: TileConfig
) -> tuple[float | None, int | None, str]:
    """hs2p's tiles/s over batches of slide copies, or (None, None, why not)."""
    try:
        import hs2p
    except Exception as err:  # not installed, or broken dependencies
        return None, None, f"hs2p not importable: {type(err).__name__}: {err}"

    def batch(copies: int, tag: str) -> tuple[int, float]:
        specs = [hs2p.SlideSpec(sample_id=f"{tag}-{k}", image_path=Path(slide)) for k in range(copies)]
        start = time.perf_counter()
        artifacts = hs2p.tile_slides(
            specs,
            tiling=hs2p.TilingConfig(
                requested_spacing_um=cfg.target_mpp,
                requested_tile_size_px=cfg.tile_size,
                tolerance=0.05,
                overlap=0.0,
                backend="openslide",
            ),
            segmentation=hs2p.SegmentationConfig(method="hsv"),
            filtering=hs2p.FilterConfig(filter_white=True),
            output_dir=Path(out_dir) / tag,
            num_workers=workers,
            save_tiles=True,
            jpeg_backend="pil",
        )
        return sum(a.num_tiles for a in artifacts), time.perf_counter() - start

    try:
        # hs2p starts a process pool per call: its steady rate is the difference between a
        # small and a large batch (start-up excluded, as the dcssl pool's is)
        batch(workers, "warm")
        small_tiles, small_s = batch(workers, "small")
        extra = max(workers, math.ceil(min_seconds / (small_s / workers)))
        while True:
            big_tiles, big_s = batch(workers + extra, f"big{extra}")
            if big_s - small_s >= min_seconds or extra >= 64 * workers:
                break
            extra *= 2
        rate = (big_tiles - small_tiles) / max(big_s - small_s, 1e-9)
        return (
            rate,
            big_tiles // (workers + extra),
            (f"{extra} extra copies: {big_s - small_s:.1f} s beyond start-up"),
        )
    except Exception as err:  # hs2p refuses some slides (e.g. no MPP): report, do not fake
        return None, None, f"hs2p failed on this slide: {type(err).__name__}: {err}"


def _peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024  # ru_maxrss is in KiB on Linux


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def _slide_size(text: str) -> tuple[int, int]:
    """``40000`` (square) or ``100000x80000`` (width x height) → (width, height)."""
    try:
        parts = [int(v) for v in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1024:
        raise argparse.ArgumentTypeError(f"{text!r}: give N or WxH in pixels, each ≥ 1024 (e.g. 40000)")
    return parts[0], parts[-1]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dcssl.bench tiling", description=__doc__)
    default_slide = Path(__file__).resolve().parents[2] / "tests" / "data" / "cmu-1-small-region.svs"
    parser.add_argument("--slide", default=str(default_slide))
    parser.add_argument(
        "--slide-size", type=_slide_size, metavar="N|WxH", help="tile a synthetic TCGA-like 40× slide instead"
    )
    parser.add_argument(
        "--assume-mpp", type=float, metavar="UM", help="µm/px for a slide without resolution metadata"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--min-seconds", type=float, default=5.0, help="each figure keeps its workers busy at least this long"
    )
    parser.add_argument("--no-hs2p", action="store_true", help="skip hs2p (reported as null)")
    parser.add_argument("--memory-only", action="store_true", help="only the memory and decode figures")
    parser.add_argument(
        "--max-rss-mb", type=float, default=1024.0, help="exit 1 when the tree's peak memory is above this"
    )
    return parser


def _throughput(slide: str, cfg: TileConfig, args, out: str, synthetic: bool) -> dict:
    ours, ours_pass, ours_n = _run_pool(
        dcssl_tile, slide, cfg, args.workers, args.min_seconds, out, not synthetic
    )
    peak = _peak_rss_mb()  # before the baselines run: children's peak is ours
    print(
        f"dcssl  {ours:8.1f} tiles/s  ({ours_pass} tiles per pass, {ours_n} passes, peak RSS {peak:.0f} MB)"
    )
    naive, naive_pass, naive_n = _run_pool(
        naive_tile, slide, cfg, args.workers, args.min_seconds, out, not synthetic
    )
    print(
        f"naive  {naive:8.1f} tiles/s  ({naive_pass} tiles per pass, {naive_n} passes; "
        f"one read_region per tile)  → dcssl is {ours / naive:.2f}×"
    )
    if args.no_hs2p:
        hs2p_rate, hs2p_pass, note = None, None, "skipped (--no-hs2p)"
    else:
        hs2p_rate, hs2p_pass, note = _hs2p(slide, args.workers, args.min_seconds, out, cfg)
    if hs2p_rate is None:
        print(f"hs2p   n/a: {note}")
    else:
        print(
            f"hs2p   {hs2p_rate:8.1f} tiles/s  ({hs2p_pass} tiles per pass, {note})  "
            f"→ dcssl is {ours / hs2p_rate:.2f}×"
        )
    return {
        "tiles_per_s": round(ours, 1),
        "naive_tiles_per_s": round(naive, 1),
        "hs2p_tiles_per_s": round(hs2p_rate, 1) if hs2p_rate else None,
        "ratio_vs_naive": _ratio(ours, naive),
        "ratio_vs_hs2p": _ratio(ours, hs2p_rate),
        "peak_rss_mb": round(peak, 1),
        "tiles_per_pass": {"dcssl": ours_pass, "naive": naive_pass, "hs2p": hs2p_pass},
        "hs2p_note": note,
    }


def _config(args) -> TileConfig:
    if args.assume_mpp is None:
        return TileConfig(workers=1)
    return TileConfig(workers=1, mpp_policy="assume", assumed_mpp=args.assume_mpp)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.slide_size is None and not Path(args.slide).is_file():
        print(f"error: {args.slide}: slide not found; pass --slide PATH or --slide-size N", file=sys.stderr)
        return 2
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    cfg = _config(args)
    with tempfile.TemporaryDirectory(prefix="dcssl-bench-tiling-") as out:
        slide = args.slide
        if args.slide_size is not None:
            from dcssl.slides.synthetic_svs import write_tcga_like_slide

            width, height = args.slide_size
            begin = time.perf_counter()
            slide = str(write_tcga_like_slide(Path(out) / f"tcga-like-{width}x{height}.svs", width, height))
            print(
                f"wrote {slide} ({Path(slide).stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - begin:.0f} s"
            )
        print(f"slide {slide}, {args.workers} workers, ≥ {args.min_seconds:g} s per figure")
        result: dict = {"bench": "tiling", "slide": args.slide if args.slide_size is None else "synthetic"}
        result |= {"slide_size": list(args.slide_size) if args.slide_size else None, "workers": args.workers}
        if not args.memory_only:
            result |= _throughput(slide, cfg, args, out, synthetic=args.slide_size is not None)
        from dcssl.bench._tiling_memory import decode_rates, tree_memory

        memory = tree_memory(slide, replace(cfg, workers=args.workers), args.workers, out)
        print(
            f"memory {memory['tree_peak_rss_mb']:.0f} MB for the tree (tiling process "
            f"{memory['main_peak_rss_mb']:.0f} MB + {memory['processes'] - 1} more, largest "
            f"{memory['worker_peak_rss_mb']:.0f} MB), one slide in {memory['seconds']:.0f} s"
        )
        decode = decode_rates(slide)
        print(f"decode {decode}")
    result |= memory | {"decode": decode, "max_rss_mb": args.max_rss_mb}
    result["under_max_rss"] = memory["tree_peak_rss_mb"] <= args.max_rss_mb
    print(json.dumps(result))
    return 0 if result["under_max_rss"] else 1


if __name__ == "__main__":
    sys.exit(main())
