"""Labelled tiles for evaluation: an ingested labelled store, or a MedMNIST-style ``.npz``.

A labelled set is a reference (train) split, whose labels the classifiers see, and a query (test)
split they are scored on. ``.npz`` files give both (``train_images/train_labels`` and
``test_images/test_labels``); a store gives them through shards whose slide id is ``train`` and
``test`` (what :func:`ingest_npz` writes), otherwise a fixed stratified split is drawn.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from dcssl.paths import RunPaths
from dcssl.store import ShardWriter, Store, append_ledger, build_manifest, decode_tile

__all__ = [
    "LabelledDataError",
    "TileSource",
    "ArraySource",
    "StoreSource",
    "LabelledSet",
    "load_labelled",
    "find_store",
    "stratified_split",
    "fraction_subset",
    "ingest_npz",
    "read_npz_split",
]


class LabelledDataError(ValueError):
    """The labelled data cannot be used; the message names it and says what to do."""


class TileSource(Protocol):
    """Tiles by position: ``read`` returns H×W×3 uint8 arrays (sizes may differ per tile)."""

    def __len__(self) -> int: ...

    def read(self, positions: np.ndarray) -> list[np.ndarray]: ...


class ArraySource:
    """Tiles held in memory as one N×H×W×3 (or N×H×W grayscale) uint8 array."""

    def __init__(self, images: np.ndarray):
        images = np.asarray(images)
        if images.ndim == 3:  # grayscale MedMNIST sets: repeat into three channels
            images = np.repeat(images[..., None], 3, axis=-1)
        if images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise LabelledDataError(f"images of shape {images.shape}: expected N×H×W×3 uint8")
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)
        self.images = images.astype(np.uint8, copy=False)

    def __len__(self) -> int:
        return len(self.images)

    def read(self, positions: np.ndarray) -> list[np.ndarray]:
        return list(self.images[np.asarray(positions, dtype=np.int64)])


class StoreSource:
    """Tiles of a store, at the given global indices (all of them by default)."""

    def __init__(self, store: Store, indices: np.ndarray | None = None):
        self.store = store
        self.indices = (
            np.arange(store.n_tiles, dtype=np.int64)
            if indices is None
            else np.asarray(indices, dtype=np.int64)
        )

    def __len__(self) -> int:
        return len(self.indices)

    def read(self, positions: np.ndarray) -> list[np.ndarray]:
        shard, row = self.store.locate(self.indices[np.asarray(positions, dtype=np.int64)])
        out: list[np.ndarray | None] = [None] * len(shard)
        for s in np.unique(shard):
            where = np.flatnonzero(shard == s)
            rows = row[where]
            order = np.argsort(rows, kind="stable")  # h5py reads increasing indices only
            unique_rows, inverse = np.unique(rows[order], return_inverse=True)
            with self.store.open_shard(int(s)) as f:
                data = f["tiles"][unique_rows]
            for k, j in enumerate(where[order]):
                out[j] = decode_tile(data[inverse[k]])
        return out


@dataclass
class LabelledSet:
    reference: TileSource
    reference_labels: np.ndarray
    queries: TileSource
    query_labels: np.ndarray
    description: str
    """Where the split came from, for the report."""

    @property
    def n_classes(self) -> int:
        return int(max(self.reference_labels.max(), self.query_labels.max()) + 1)


def stratified_split(
    labels: np.ndarray, test_fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(train positions, test positions): each class split in the same proportion.

    A class with a single example stays in train (a query of it could never be answered).
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = 0 if len(members) < 2 else min(max(1, round(test_fraction * len(members))), len(members) - 1)
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def fraction_subset(labels: np.ndarray, fraction: float, seed: int = 0) -> np.ndarray:
    """Positions of a stratified ``fraction`` of the examples, at least one per class.

    Subsets are nested: with the same seed, the 1 % subset lies inside the 10 % one.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        chosen.append(members[: max(1, round(fraction * len(members)))])
    return np.sort(np.concatenate(chosen))


def read_npz_split(npz: np.lib.npyio.NpzFile, split: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    images_key, labels_key = f"{split}_images", f"{split}_labels"
    if images_key not in npz.files or labels_key not in npz.files:
        raise LabelledDataError(
            f"{path}: no {images_key}/{labels_key} arrays (has {npz.files}); pass a MedMNIST-style .npz"
        )
    images, labels = npz[images_key], np.asarray(npz[labels_key]).reshape(-1).astype(np.int64)
    if len(images) != len(labels):
        raise LabelledDataError(f"{path}: {len(images)} {split} images but {len(labels)} labels")
    return images, labels


def _load_npz(path: Path, test_fraction: float, seed: int) -> LabelledSet:
    try:
        npz = np.load(path)
    except (OSError, ValueError) as err:
        raise LabelledDataError(f"{path}: not a readable .npz ({err})") from None
    with npz:
        images, labels = read_npz_split(npz, "train", path)
        if "test_images" in npz.files:
            test_images, test_labels = read_npz_split(npz, "test", path)
            return LabelledSet(
                ArraySource(images),
                labels,
                ArraySource(test_images),
                test_labels,
                f"{path.name}: train → reference, test → queries",
            )
    ref, query = stratified_split(labels, test_fraction, seed)
    source = ArraySource(images)
    return LabelledSet(
        ArraySource(source.images[ref]),
        labels[ref],
        ArraySource(source.images[query]),
        labels[query],
        f"{path.name}: stratified {1 - test_fraction:.0%}/{test_fraction:.0%} split of train (seed {seed})",
    )


def find_store(path: Path) -> Store:
    """The store at ``path``: a store folder (with manifest.json) or a run directory."""
    for root in (path, RunPaths(path).store):
        if (root / "manifest.json").is_file():
            return Store(root)
    raise LabelledDataError(
        f"{path}: neither a tile store (no manifest.json) nor a run directory "
        f"with one; ingest the labelled folder first"
    )


def _load_store(path: Path, test_fraction: float, seed: int) -> LabelledSet:
    store = find_store(path)
    labels = store.labels()
    if labels is None:
        raise LabelledDataError(
            f"{store.root}: the store has no labels; ingest a labelled folder "
            f"(class sub-folders) or pass a MedMNIST-style .npz"
        )
    by_split = {info.slide_id: info for info in store.shards}
    if {"train", "test"} <= set(by_split):
        ref, query = (
            np.arange(by_split[s].offset, by_split[s].offset + by_split[s].n_tiles) for s in ("train", "test")
        )
        description = f"{store.root}: shard 'train' → reference, shard 'test' → queries"
    else:
        ref, query = stratified_split(labels, test_fraction, seed)
        description = (
            f"{store.root}: stratified {1 - test_fraction:.0%}/{test_fraction:.0%} split (seed {seed})"
        )
    if len(query) == 0:
        raise LabelledDataError(
            f"{store.root}: too few labelled tiles for a held-out split; need ≥ 2 tiles in some class"
        )
    return LabelledSet(
        StoreSource(store, ref), labels[ref], StoreSource(store, query), labels[query], description
    )


def load_labelled(path: str | Path, test_fraction: float = 0.3, seed: int = 0) -> LabelledSet:
    """The labelled set at ``path`` (an ``.npz`` file, a store folder, or a run directory)."""
    path = Path(path)
    if path.is_file() and path.suffix == ".npz":
        return _load_npz(path, test_fraction, seed)
    if path.is_dir():
        return _load_store(path, test_fraction, seed)
    raise LabelledDataError(
        f"{path}: not found or not a labelled set; pass an ingested store folder or a MedMNIST-style .npz"
    )


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def ingest_npz(npz_path: str | Path, store_root: str | Path, splits: Sequence[str] = ("train",)) -> Store:
    """Write the given splits of a MedMNIST-style ``.npz`` as a labelled store (one raw shard per
    split, slide id = split name). Shards already written are kept, so a re-run only finishes."""
    npz_path, root = Path(npz_path), Path(store_root)
    md5 = _md5(npz_path)
    with np.load(npz_path) as npz:
        for split in splits:
            shard = root / "shards" / f"{split}.h5"
            if shard.is_file():
                continue
            images, labels = read_npz_split(npz, split, npz_path)
            images = ArraySource(images).images
            if images.shape[1] != images.shape[2]:
                raise LabelledDataError(
                    f"{npz_path}: {split} images are {images.shape[1:3]}; tiles must be square"
                )
            n = len(images)
            with ShardWriter(
                shard,
                slide_id=split,
                tile_size=images.shape[1],
                encoding="raw",
                source_md5=md5,
                with_labels=True,
                attrs={"source": npz_path.name},
            ) as writer:
                # pre-tiled images have no position on a slide: coords are (0, 0)
                writer.append(images, np.zeros((n, 2), np.int64), np.ones(n, np.float32), labels)
            append_ledger(
                root,
                {"slide": split, "status": "ok", "stage": "ingest", "n_tiles": n, "source": str(npz_path)},
            )
    return build_manifest(root, [f"{s}.h5" for s in splits])
