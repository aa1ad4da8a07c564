"""The tile store as a map-style dataset that reads and decodes whole batches.

- Keys are global tile indices (manifest order). A training key is ``(tile, sample seed, owner)``
  from the sampler and gets the random training view; a plain ``int`` gets the eval view.
- ``__getitems__`` (called by the DataLoader once per batch) groups the batch by shard and reads
  each shard's rows in one HDF5 call (a slice when they are consecutive, as in extraction), then
  decodes with ``torchvision.io.decode_jpeg`` (faster than Pillow).
- HDF5 files are opened lazily in the process that reads them — each DataLoader worker opens its
  own — and never carried across fork. ``locking=False`` for NFS/Lustre.
- Labels live in the *training* process (``set_labels`` / ``labels_for``), not in the workers:
  swapping them takes effect at once, even with persistent workers that hold an old copy of the
  dataset object.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from h5py import h5s, h5t
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from dcssl.store import Store, check_tiles, decode_tile, open_h5
from dcssl.train.augment import BatchAugment, MultiCrop, eval_transform, uniforms, view_uniforms
from dcssl.train.config import AugmentConfig

__all__ = ["TileDataset", "make_loader", "decode_batch", "new_batch"]

from torchvision.io import ImageReadMode, decode_jpeg


def decode_batch(encoded: Sequence[np.ndarray], size: int) -> torch.Tensor:
    """uint8 N×3×size×size from JPEG byte vectors (or raw H×W×3 tiles), resizing odd sizes."""
    if not encoded:
        return torch.empty(0, 3, size, size, dtype=torch.uint8)
    if np.asarray(encoded[0]).ndim == 3:
        images = [torch.from_numpy(np.asarray(t)).permute(2, 0, 1) for t in encoded]
    else:
        with warnings.catch_warnings():
            # torchvision ≥ 0.29 warns on every call that its codecs move to torchcodec;
            # decode_jpeg is still the fastest CPU decoder here (libjpeg-turbo, no PIL round trip)
            warnings.simplefilter("ignore", DeprecationWarning)
            images = decode_jpeg(
                [torch.from_numpy(np.asarray(t, dtype=np.uint8)) for t in encoded], mode=ImageReadMode.RGB
            )
    images = [_fit(im, size) for im in images]
    return torch.stack(images, out=new_batch((len(images), 3, size, size), torch.uint8))


def new_batch(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor | None:
    """In a loader worker, an empty tensor in shared memory (else None: allocate as usual).

    A worker's batch crosses to the training process through shared memory; building it there
    in the first place saves a copy of every batch (torch's default_collate does the same).
    """
    if get_worker_info() is None:
        return None
    numel = int(np.prod(shape))
    storage = torch.UntypedStorage._new_shared(numel * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage).view(shape)


def _fit(image: torch.Tensor, size: int) -> torch.Tensor:
    if image.shape[-2:] == (size, size):
        return image
    # a shard cut at another tile size: bring it to the common size so batches stack
    resized = F.interpolate(
        image[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False
    )
    return resized[0].round().clamp(0, 255).to(torch.uint8)


class TileDataset(Dataset):
    """Tiles of a store by global index; batches come out as a dict of tensors.

    ``transform_in_worker=True``: images are finished float tensors (augmented or eval view).
    False: images stay uint8 tiles and training keys carry their uniforms ``u`` so the consumer
    augments on its device (``BatchAugment``) — the CPU then only reads and decodes.
    Multi-crop (``augment.views`` > 1): training ``images`` are G×N×3×S×S global views and
    ``local_images`` L×N×3×s×s small ones (or ``u`` is N×views×N_PARAMS, for the device).
    """

    def __init__(
        self,
        store_root: str | os.PathLike,
        augment: AugmentConfig,
        *,
        locking: bool | None = None,
        transform_in_worker: bool = True,
        max_open: int = 256,
    ):
        self.store = Store(store_root, locking=locking)
        self.augment_cfg = augment
        self.transform_in_worker = transform_in_worker
        self.augment = BatchAugment(augment)
        self.multicrop = MultiCrop(augment) if augment.views > 1 else None
        self.tile_size = self._probe_tile_size()
        self.labels: np.ndarray | None = None
        self.max_open = max_open
        self._files: OrderedDict[int, _ShardReader] = OrderedDict()
        self._pid = os.getpid()

    def _probe_tile_size(self) -> int:
        if not self.store.shards:
            raise ValueError(f"{self.store.root}: the store has no shards; tile or ingest first")
        with open_h5(self.store.shard_path(0), locking=self.store.locking) as f:
            size = f.attrs.get("tile_size")
            if size is not None:
                return int(size)
            return int(decode_tile(f["tiles"][0]).shape[0])  # no attribute: look at a tile

    def __len__(self) -> int:
        return self.store.n_tiles

    def close(self) -> None:
        """Close this process's HDF5 handles (they reopen on the next read)."""
        if os.getpid() == self._pid:
            for reader in self._files.values():
                reader.close()
        self._files = OrderedDict()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_files"] = OrderedDict()  # open HDF5 handles never travel to another process
        return state

    # ------------------------------------------------------------------ labels (main process)
    def set_labels(self, labels: np.ndarray) -> None:
        labels = np.asarray(labels)
        if labels.shape != (len(self),):
            raise ValueError(f"labels have shape {labels.shape}, the store has {len(self)} tiles")
        self.labels = labels

    def labels_for(self, index: torch.Tensor) -> torch.Tensor:
        if self.labels is None:
            raise RuntimeError("no labels set: call set_labels first")
        return torch.from_numpy(self.labels[index.numpy()].astype(np.int64))

    # ------------------------------------------------------------------ reading
    def _reader(self, shard: int) -> _ShardReader:
        if os.getpid() != self._pid:  # forked since the handles were opened: start afresh
            self._files, self._pid = OrderedDict(), os.getpid()
        reader = self._files.get(shard)
        if reader is None:
            if len(self._files) >= self.max_open:  # bounded: file descriptors and HDF5 caches
                self._files.popitem(last=False)[1].close()
            reader = self._files[shard] = _ShardReader(self.store.open_shard(shard))
        else:
            self._files.move_to_end(shard)
        return reader

    def read_encoded(self, index: np.ndarray) -> list[np.ndarray]:
        """Stored tiles (JPEG byte vectors or raw arrays) for global indices, in the given order."""
        index = np.asarray(index, dtype=np.int64)
        out: list[Any] = [None] * index.size
        shards, rows = self.store.locate(index)
        order = np.lexsort((rows, shards))  # by shard, then row: HDF5 wants increasing rows
        shards, rows = shards[order], rows[order]
        bounds = np.flatnonzero(np.diff(shards)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, index.size]):
            part = rows[lo:hi]
            uniq, inverse = (
                np.unique(part, return_inverse=True)
                if (np.diff(part) == 0).any()
                else (part, np.arange(part.size))
            )
            data = self._reader(int(shards[lo])).read(uniq)
            for slot, k in zip(order[lo:hi].tolist(), inverse.tolist()):
                out[slot] = data[k]
        return out

    def __getitems__(self, keys: list) -> dict[str, torch.Tensor]:
        if not keys:  # the tail of a lockstep extraction plan
            size = self.augment_cfg.size if self.transform_in_worker else self.tile_size
            return {
                "index": torch.empty(0, dtype=torch.int64),
                "owner": torch.empty(0, dtype=torch.bool),
                "images": torch.empty(0, 3, size, size),
            }
        train = isinstance(keys[0], tuple)
        if train:
            index = np.fromiter((k[0] for k in keys), dtype=np.int64, count=len(keys))
            seeds = np.fromiter((k[1] for k in keys), dtype=np.int64, count=len(keys))
            owner = torch.tensor([bool(k[2]) for k in keys], dtype=torch.bool)
        else:
            index = np.asarray(keys, dtype=np.int64)
            owner = torch.ones(len(keys), dtype=torch.bool)
        images = decode_batch(self.read_encoded(index), self.tile_size)
        batch = {"index": torch.from_numpy(index), "owner": owner}
        u = None
        if train:
            views = self.augment_cfg.views
            u = torch.from_numpy(uniforms(seeds) if views == 1 else view_uniforms(seeds, views))
        if self.transform_in_worker and train and self.multicrop is not None:
            images, batch["local_images"] = self.multicrop(images, u)  # G×N×3×S×S, L×N×3×s×s
        elif self.transform_in_worker:
            size = self.augment_cfg.size
            out = new_batch((len(keys), 3, size, size), torch.float32)
            images = self.augment(images, u, out) if train else eval_transform(images, self.augment_cfg, out)
        elif train:
            batch["u"] = u
        batch["images"] = images
        return batch

    def __getitem__(self, key) -> dict[str, torch.Tensor]:
        return {name: value[0] for name, value in self.__getitems__([key]).items()}


class _ShardReader:
    """One open shard: its tiles dataset looked up once, vlen rows read through h5py's low-level
    API (the high-level indexing costs more than the read itself for a few rows)."""

    def __init__(self, handle: h5py.File):
        self.handle = handle
        self.tiles = handle["tiles"]
        self.crcs = handle["crc32"][:] if "crc32" in handle else None  # 4 bytes a tile, read once
        self.vlen = h5py.check_vlen_dtype(self.tiles.dtype) is not None
        self.mtype = h5t.py_create(self.tiles.dtype) if self.vlen else None

    def read(self, rows: np.ndarray) -> Sequence[np.ndarray]:
        """Rows (increasing, unique) as JPEG byte vectors, or an N×H×W×3 array for raw tiles;
        DamagedFile when one fails its CRC32 — a garbled JPEG would often still decode."""
        tiles = self._read(rows)
        if self.crcs is not None:
            check_tiles(Path(self.handle.filename), rows, tiles, self.crcs[rows])
        return tiles

    def _read(self, rows: np.ndarray) -> Sequence[np.ndarray]:
        if rows[-1] - rows[0] + 1 == rows.size:  # consecutive rows (extraction): one slice
            if not self.vlen:
                return self.tiles[int(rows[0]) : int(rows[-1]) + 1]
            space = self.tiles.id.get_space()
            space.select_hyperslab((int(rows[0]),), (rows.size,))
        elif not self.vlen:
            return self.tiles[rows]
        else:
            space = self.tiles.id.get_space()
            space.select_elements(rows.astype(np.uint64).reshape(-1, 1))
        out = np.empty(rows.size, dtype=self.tiles.dtype)
        self.tiles.id.read(h5s.create_simple((rows.size,)), space, out, self.mtype)
        return out

    def close(self) -> None:
        self.handle.close()


def _passthrough(batch: dict) -> dict:
    return batch  # __getitems__ already returns a whole batch


def make_loader(
    dataset: TileDataset,
    *,
    batch_size: int | None = None,
    sampler: Sampler | None = None,
    batch_sampler: Sampler | None = None,
    workers: int = 0,
    prefetch_factor: int = 4,
    pin_memory: bool = False,
    persistent_workers: bool = False,
) -> DataLoader:
    """A DataLoader over ``dataset`` whose batches come from ``__getitems__`` in one piece."""
    extra: dict[str, Any] = {}
    if workers > 0:
        extra = dict(
            prefetch_factor=prefetch_factor,
            persistent_workers=persistent_workers,
            multiprocessing_context="fork" if os.name == "posix" else None,
        )
    if batch_sampler is not None:
        return DataLoader(
            dataset,
            batch_sampler=batch_sampler,
            num_workers=workers,
            collate_fn=_passthrough,
            pin_memory=pin_memory,
            **extra,
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=workers,
        collate_fn=_passthrough,
        pin_memory=pin_memory,
        **extra,
    )
