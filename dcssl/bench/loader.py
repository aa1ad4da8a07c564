"""``python -m dcssl.bench loader``: tiles/s per core delivered as batch tensors, side by side.

The same real H&E tiles (random 224 px crops of a shipped slide, JPEG q85, as the tile stage
writes them) are read in the same random order, in batches, by one process on one core:

- store:       the training dataset over the HDF5 tile store (batched HDF5 reads + decode_jpeg),
               uint8 N×3×H×W batches — read + decode, no augmentation — in uniformly random
               order over the whole store (every batch spans all shards);
- windowed:    the same dataset in the training sampler's order with shard windows
               (``train.data.shard_window``), at a mission slide's draws per shard per rank: the
               figure that stays flat with the shard count (``--shards 11000``: a store of many
               more shards than distinct tiles, each shard cycling through them);
- decode:      pure in-memory JPEG decode of the same bytes into the same batches (the floor);
- imagefolder: torchvision ImageFolder of the same tiles as .jpg files (PIL) + default collate;
- augmented:   the store with the default CPU augmentations (crop, flips, rotations, colour
               jitter, grayscale, normalisation) on whole batches;
- gpu augment: the same augmentations as one batch op on the GPU, when there is one.

Rates are per CPU-second of the one benchmark process (one thread), so they are per core and
do not move when other jobs share the machine; each is the best of ``--rounds`` rounds of at
least ``--seconds`` of work. Targets: store ≥ 80 % of decode and ≥ 1.2 × imagefolder, windowed ≥
80 % of decode at 11,000 shards. The last line is one JSON object with tiles_per_s_per_core,
windowed_tiles_per_s_per_core and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from dcssl.paths import RunPaths

__all__ = ["main", "bench_tiles", "write_store", "write_image_folder"]

DEFAULT_SLIDE = Path(__file__).resolve().parents[2] / "tests" / "data" / "cmu-1-small-region.svs"


def bench_tiles(slide: Path, n: int, size: int, seed: int = 0) -> list[bytes]:
    """``n`` JPEG tiles: random size×size crops of level 0 of ``slide`` (synthetic if absent)."""
    from dcssl.store import encode_jpeg

    rng = np.random.default_rng(seed)
    if slide.is_file():
        import openslide

        with openslide.OpenSlide(str(slide)) as handle:
            image = np.asarray(handle.read_region((0, 0), 0, handle.dimensions).convert("RGB"))
        crops = [
            image[y : y + size, x : x + size]
            for y, x in zip(
                rng.integers(0, image.shape[0] - size, n), rng.integers(0, image.shape[1] - size, n)
            )
        ]
    else:
        from dcssl.train.synthetic import synthetic_tile

        print(f"{slide} not found: using synthetic tiles", flush=True)
        crops = [synthetic_tile(rng, i % 8, size, 8) for i in range(n)]
    return [encode_jpeg(np.ascontiguousarray(c), 85) for c in crops]


def write_store(root: Path, tiles: list[bytes], size: int, shards: int = 64, per_shard: int = 0) -> None:
    """``shards`` shards over ``tiles`` split evenly, or of ``per_shard`` tiles each cycling
    through ``tiles`` (a store of many more shards than distinct tiles)."""
    from dcssl.store import ShardWriter, build_manifest

    entries = np.arange(shards * per_shard if per_shard else len(tiles))
    for s, part in enumerate(np.array_split(entries, shards)):
        with ShardWriter(
            root / "shards" / f"bench-{s}.h5", slide_id=f"bench-{s}", tile_size=size, with_labels=True
        ) as writer:
            chunk = [tiles[i % len(tiles)] for i in part]
            writer.append(chunk, np.zeros((len(part), 2)), np.ones(len(part)), part % 4)
    build_manifest(root)


def write_image_folder(root: Path, tiles: list[bytes]) -> None:
    for i, data in enumerate(tiles):
        folder = root / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"tile{i:06d}.jpg").write_bytes(data)


def _store_matches(store: Path, shards: int, n_tiles: int) -> bool:
    from dcssl.store import Store

    if not (store / "manifest.json").is_file():
        return False
    built = Store(store)
    return len(built.shards) == shards and built.n_tiles == n_tiles


def _rate(
    one_pass: Callable[[], int], seconds: float, clock: Callable[[], float] = time.process_time
) -> float:
    """Tiles per CPU-second of this (single-threaded) process: repeated units of work lasting
    at least ``seconds`` of CPU time after one warm-up. CPU time, not wall time, so that other
    jobs on a shared machine do not move the figures."""
    one_pass()
    done, start = 0, clock()
    while clock() - start < seconds:
        done += one_pass()
    return done / (clock() - start)


def windowed_order(store: Path, window: int, draws_per_shard: int, limit: int) -> np.ndarray:
    """The first ``limit`` draws of one rank's epoch from the training sampler with shard windows,
    at ``draws_per_shard`` draws per shard (a mission slide of ~2,700 tiles over 8 ranks: ~340)."""
    from dcssl.store import Store
    from dcssl.train.sampler import UniformClusterSampler

    offsets = Store(store).offsets
    labels = (np.arange(offsets[-1]) % 64).astype(np.int32)
    sampler = UniformClusterSampler(
        labels,
        seed=1,
        samples_per_epoch=draws_per_shard * (offsets.size - 1),
        shard_offsets=offsets,
        shard_window=window,
    )
    return sampler.plan()[0][:limit]


def _passes(tiles: list[bytes], store: Path, folder: Path, order: np.ndarray, batch: int, windowed):
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder
    from torchvision.io import ImageReadMode, decode_jpeg
    from torchvision.transforms import PILToTensor

    from dcssl.train.augment import sample_seeds
    from dcssl.train.config import AugmentConfig
    from dcssl.train.data import TileDataset, make_loader

    batches = [order[i : i + batch].tolist() for i in range(0, len(order) - batch + 1, batch)]
    window_batches = [windowed[i : i + batch].tolist() for i in range(0, len(windowed) - batch + 1, batch)]
    chunks, window_chunks = _Chunks(len(batches)), _Chunks(len(window_batches))
    plain = TileDataset(store, AugmentConfig(), transform_in_worker=False)
    augmented = TileDataset(store, AugmentConfig(size=224, device="cpu"))
    seeds = sample_seeds(0, 1, np.arange(len(order)))
    train_batches = [
        [(t, int(seeds[i + j]), True) for j, t in enumerate(b)]
        for i, b in zip(range(0, len(order), batch), batches)
    ]
    encoded = [torch.frombuffer(bytearray(t), dtype=torch.uint8) for t in tiles]
    images = ImageFolder(str(folder), transform=PILToTensor())
    # ImageFolder sorts by class then name; map tile i to its position so the order is the same
    position = {int(Path(p).stem[4:]): k for k, (p, _) in enumerate(images.samples)}
    distinct = len(tiles)  # store entry i holds tile i % distinct

    def count(loader) -> int:
        return sum(len(b["index"] if isinstance(b, dict) else b[0]) for b in loader)

    def decode() -> int:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return sum(
                len(
                    torch.stack(
                        decode_jpeg([encoded[i % distinct] for i in batches[k]], mode=ImageReadMode.RGB)
                    )
                )
                for k in chunks.next()
            )

    folder_batches = [[position[i % distinct] for i in b] for b in batches]
    return {
        "decode": decode,
        "store": lambda: count(make_loader(plain, batch_sampler=chunks.pick(batches))),
        "windowed": lambda: count(make_loader(plain, batch_sampler=window_chunks.pick(window_batches))),
        "imagefolder": lambda: count(DataLoader(images, batch_sampler=chunks.pick(folder_batches))),
        "augmented": lambda: count(make_loader(augmented, batch_sampler=chunks.pick(train_batches))),
    }


class _Chunks:
    """Hands out the batches a few at a time, round robin, so a unit of work stays short."""

    def __init__(self, n_batches: int, per_chunk: int = 4):
        self.n, self.per, self.at = n_batches, per_chunk, 0

    def next(self) -> list[int]:
        picked = [(self.at + i) % self.n for i in range(self.per)]
        self.at = (self.at + self.per) % self.n
        return picked

    def pick(self, items: list) -> list:
        return [items[k] for k in self.next()]


def _gpu_augment_rate(tiles: int, batch: int, seconds: float) -> float | None:
    if not torch.cuda.is_available():
        return None
    from dcssl.train.augment import BatchAugment, uniforms
    from dcssl.train.config import AugmentConfig

    aug = BatchAugment(AugmentConfig(size=224))
    x = torch.randint(0, 255, (batch, 3, 224, 224), dtype=torch.uint8, device="cuda")
    u = torch.from_numpy(uniforms(np.arange(batch))).cuda()

    def one() -> int:
        aug(x, u)
        torch.cuda.synchronize()
        return batch

    return _rate(one, seconds, clock=time.perf_counter)  # GPU work: wall time


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dcssl.bench loader", description=__doc__.splitlines()[0])
    p.add_argument("--slide", type=Path, default=DEFAULT_SLIDE, help="slide to cut tiles from")
    p.add_argument("--tiles", type=int, default=2048, help="distinct tiles")
    p.add_argument("--tile-px", type=int, default=224, help="tile side in pixels")
    p.add_argument("--batch", type=int, default=64, help="tiles per batch")
    p.add_argument(
        "--shards",
        type=int,
        default=64,
        help="store shards (64 of 32 tiles: most tiles of a batch come from different "
        "shards, as in a store of thousands of slides)",
    )
    p.add_argument(
        "--tiles-per-shard",
        type=int,
        default=0,
        help="tiles per shard cycling through the distinct tiles (default: --tiles split over --shards)",
    )
    p.add_argument("--window", type=int, default=128, help="sampler shard window (train.data.shard_window)")
    p.add_argument("--draws-per-shard", type=int, default=340, help="one rank's draws per shard per epoch")
    p.add_argument("--store-dir", type=Path, default=None, help="build the store here once and reuse it")
    p.add_argument("--seconds", type=float, default=5.0, help="work per measured figure")
    p.add_argument("--rounds", type=int, default=2, help="rounds; the best of them is reported")
    args = p.parse_args(argv)
    if args.tiles < args.batch:
        print("error: --tiles must be at least --batch", file=sys.stderr)
        return 2
    torch.set_num_threads(1)  # per core: one process, one thread
    tiles = bench_tiles(args.slide, args.tiles, args.tile_px)
    per_shard = args.tiles_per_shard or (
        -(-args.tiles // args.shards) if args.shards > args.tiles // 4 else 0
    )
    n_store = args.shards * per_shard if per_shard else args.tiles
    order = np.random.default_rng(1).permutation(n_store)
    print(
        f"{args.tiles} tiles of {args.tile_px} px, JPEG q85, mean "
        f"{np.mean([len(t) for t in tiles]) / 1024:.1f} KiB, {args.shards} shards, batches "
        f"of {args.batch}, random order, one core",
        flush=True,
    )
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        store = args.store_dir or RunPaths(Path(tmp)).store
        if not _store_matches(store, args.shards, n_store):
            write_store(store, tiles, args.tile_px, args.shards, per_shard)
        write_image_folder(Path(tmp) / "folder", tiles)
        limit = 400 * args.batch  # far more than the measured passes read
        windowed = windowed_order(store, args.window, args.draws_per_shard, limit)
        passes = _passes(tiles, store, Path(tmp) / "folder", order, args.batch, windowed)
        for r in range(args.rounds):
            for name, one_pass in passes.items():
                rate = _rate(one_pass, args.seconds)
                best[name] = max(best.get(name, 0.0), rate)
                print(f"round {r + 1} {name:12s} {rate:8.0f} tiles/s", flush=True)
    gpu = _gpu_augment_rate(args.tiles, 256, args.seconds)
    store, decode, folder = best["store"], best["decode"], best["imagefolder"]
    print(
        f"store loader   {store:8.0f} tiles/s per core  = {store / decode:.2f} × pure decode "
        f"(target ≥ 0.80), {store / folder:.2f} × ImageFolder (target ≥ 1.20)"
    )
    windowed = best["windowed"]
    print(
        f"store windowed {windowed:8.0f} tiles/s per core  = {windowed / decode:.2f} × pure decode "
        f"(sampler order, shard windows of {args.window})"
    )
    print(f"pure decode    {decode:8.0f} tiles/s per core")
    print(f"ImageFolder    {folder:8.0f} tiles/s per core")
    print(f"augmented      {best['augmented']:8.0f} tiles/s per core (default CPU augmentations)")
    print(f"GPU augment    {gpu:8.0f} tiles/s" if gpu else "GPU augment    (no GPU here)")
    result = {
        "bench": "loader",
        "tiles": args.tiles,
        "tile_px": args.tile_px,
        "batch": args.batch,
        "shards": args.shards,
        "store_tiles": n_store,
        "shard_window": args.window,
        "tiles_per_s_per_core": round(store, 1),
        "windowed_tiles_per_s_per_core": round(windowed, 1),
        "windowed_ratio_vs_decode": round(windowed / decode, 3),
        "decode_tiles_per_s": round(decode, 1),
        "imagefolder_tiles_per_s": round(folder, 1),
        "augmented_tiles_per_s_per_core": round(best["augmented"], 1),
        "gpu_augment_tiles_per_s": round(gpu, 1) if gpu else None,
        "ratio_vs_decode": round(store / decode, 3),
        "ratio_vs_imagefolder": round(store / folder, 3),
        "meets_targets": store / decode >= 0.8 and store / folder >= 1.2,
        "load_average": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
