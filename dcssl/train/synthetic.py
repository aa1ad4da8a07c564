"""Small synthetic stores and pseudo-label files, for tests, benchmarks and smoke runs.

Tiles are H&E-coloured (pink stroma, purple nuclei) textures whose nuclei density, size and tint
depend on the class, so a network can learn the class from them; each shard stores its labels.
``write_pseudo_labels`` writes an epoch's labels in the cluster job's format.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dcssl.epochs.labels import write_labels
from dcssl.store import ShardWriter, Store, build_manifest, encode_jpeg
from dcssl.train.config import AugmentConfig, DataConfig, ModelConfig, OptimConfig, TrainConfig

__all__ = ["synthetic_tile", "make_store", "write_pseudo_labels", "tiny_config"]

_STROMA = np.array([236, 180, 210], dtype=np.float32)
_NUCLEUS = np.array([90, 50, 140], dtype=np.float32)


def synthetic_tile(rng: np.random.Generator, label: int, size: int, n_classes: int) -> np.ndarray:
    """One size×size×3 uint8 tile: stroma background with class-dependent round nuclei."""
    frac = (label + 0.5) / n_classes
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    mask = np.zeros((size, size), dtype=np.float32)
    radius = size * (0.04 + 0.08 * frac)
    for _ in range(int(2 + 10 * frac)):
        cy, cx = rng.uniform(0, size, 2)
        r = radius * rng.uniform(0.7, 1.3)
        mask = np.maximum(mask, ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r).astype(np.float32))
    tint = np.array([45 * np.cos(6.28 * frac), -30 * frac, 45 * np.sin(6.28 * frac)], np.float32)
    image = _STROMA + tint + mask[..., None] * (_NUCLEUS - _STROMA)
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_store(
    root: str | Path,
    *,
    n_shards: int = 2,
    tiles_per_shard: int = 100,
    size: int = 32,
    n_classes: int = 4,
    seed: int = 0,
    quality: int = 90,
    encoding: str = "jpeg",
) -> Store:
    """Write ``n_shards`` labelled shards of synthetic tiles under ``root`` and index them."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for s in range(n_shards):
        labels = rng.integers(0, n_classes, tiles_per_shard)
        tiles = [synthetic_tile(rng, int(c), size, n_classes) for c in labels]
        coords = np.stack([np.arange(tiles_per_shard) * size, np.zeros(tiles_per_shard)], 1)
        path = root / "shards" / f"slide-{s:03d}.h5"
        with ShardWriter(
            path, slide_id=f"slide-{s:03d}", tile_size=size, encoding=encoding, mpp=0.5, with_labels=True
        ) as writer:
            data = [encode_jpeg(t, quality) for t in tiles] if encoding == "jpeg" else np.stack(tiles)
            writer.append(data, coords, np.ones(tiles_per_shard), labels)
    return build_manifest(root)


def write_pseudo_labels(run_dir: str | Path, epoch: int, labels: np.ndarray, k: int, dim: int = 1) -> Path:
    """A complete labels folder for ``epoch`` as the cluster job writes it (``dcssl.epochs.labels``;
    centroids are zeros: only the training side reads this folder here)."""
    labels = np.asarray(labels, dtype=np.int32)
    sizes = np.bincount(labels[labels >= 0], minlength=k)
    stats = {"k": int(k), "n": int(labels.size), "sizes": sizes.tolist(), "epoch": epoch}
    return write_labels(run_dir, epoch, labels, np.zeros((k, dim), dtype=np.float32), stats)


def tiny_config(size: int = 32, batch_size: int = 16, workers: int = 0, **top) -> TrainConfig:
    """A thin ResNet-18 at ``size`` px: a CPU segment in seconds (tests and smoke runs).

    Colour augmentation is off because the synthetic classes differ mainly in colour; the
    temperature is softer than the default because batches this small make 0.1 unstable.
    """
    return TrainConfig(
        model=ModelConfig(arch="resnet18", width=8, proj_dim=32, temperature=0.5),
        data=DataConfig(batch_size=batch_size, workers=workers, prefetch_factor=2),
        augment=AugmentConfig(size=size, color="none"),
        optim=OptimConfig(lr=0.05),
        **top,
    )
