"""Encoder features for every tile of a store, as one HDF5 file by global index.

Output (``RUN/embed/features.h5`` by default)::

    features        N×d float32 (or float16)   row i = the tile of global index i
    coords          N×2 int64                  level-0 x, y of each tile (CLAM order)
    shard_offsets   S+1 int64                  rows of shard s are [offsets[s], offsets[s+1])
    slide_ids       S  str                     slide id of each shard
    shard_names     S  str                     shard file name under store/shards/
    attrs           arch, width, layer, size, checkpoint, checkpoint_step, store, n_tiles, dim

``write_clam_layout`` then splits it per slide into ``features/<shard>.h5`` (``features`` N×d,
``coords`` N×2 at the root, as CLAM and TRIDENT write them) so slide-level MIL code reads them.

The file is built under a hidden ``.partial`` name, chunk by chunk (each chunk's completion is
recorded in the file), so a crash loses at most one chunk and a re-run continues; it is renamed
to its final name only when complete, so a file under the final name is always whole.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import h5py
import numpy as np

from dcssl.evaluate.config import EmbedConfig
from dcssl.evaluate.encoder import FrozenEncoder, trained_encoder
from dcssl.evaluate.features import extract_features
from dcssl.evaluate.labelled import StoreSource
from dcssl.paths import RunPaths
from dcssl.store import Store
from dcssl.train.config import TrainConfig
from hpc.checkpoint import atomic_path

__all__ = ["embed_store", "default_embed_path", "write_clam_layout"]

log = logging.getLogger(__name__)


def default_embed_path(run_dir: str | Path) -> Path:
    return RunPaths(Path(run_dir)).embeddings


def _identity(store: Store, cfg: EmbedConfig, train_cfg: TrainConfig, step: int | None, size: int) -> dict:
    """What the file's contents depend on: a finished or partial file must match all of it."""
    return {
        "store": str(store.root.resolve()),
        "n_tiles": store.n_tiles,
        "checkpoint_step": -1 if step is None else step,
        "layer": cfg.layer,
        "dtype": cfg.dtype,
        "size": size,
        "arch": train_cfg.model.arch,
        "width": train_cfg.model.width,
    }


def _matches(path: Path, identity: dict) -> bool:
    try:
        with h5py.File(path, "r", locking=False) as f:
            return all(f.attrs.get(k) == v for k, v in identity.items())
    except OSError:
        return False


def _write_index(f: h5py.File, store: Store) -> None:
    text = h5py.string_dtype()
    f["shard_offsets"] = store.offsets
    f.create_dataset("slide_ids", data=[s.slide_id for s in store.shards], dtype=text)
    f.create_dataset("shard_names", data=[s.name for s in store.shards], dtype=text)
    coords = f.create_dataset("coords", shape=(store.n_tiles, 2), dtype=np.int64)
    for i, info in enumerate(store.shards):
        with store.open_shard(i) as shard:
            coords[info.offset : info.offset + info.n_tiles] = shard["coords"][:]


def _finish(partial: Path, out: Path) -> None:
    with open(partial, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, out)
    fd = os.open(out.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def embed_store(
    run_dir: str | Path,
    store_path: str | Path,
    cfg: EmbedConfig,
    train_cfg: TrainConfig,
    out: str | Path | None = None,
) -> dict:
    """Write (or finish, or keep) the features file; a summary dict."""
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else default_embed_path(run_dir)
    store = Store(store_path)
    if store.n_tiles == 0:
        raise ValueError(f"{store.root}: the store has no tiles; tile or ingest first")
    loaded = trained_encoder(run_dir, train_cfg)
    size = cfg.size or train_cfg.augment.size
    identity = _identity(store, cfg, train_cfg, loaded.step, size)
    summary = {"out": str(out), "n_tiles": store.n_tiles, "checkpoint_step": loaded.step}
    if out.is_file() and _matches(out, identity):
        log.info("%s is complete for this store and checkpoint: nothing to do", out)
        return {**summary, "skipped": True}
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    if partial.is_file() and not _matches(partial, identity):
        partial.unlink()  # from another checkpoint or store: its rows are worthless
    encoder = FrozenEncoder(loaded.net, cfg.layer)
    started = time.time()
    with h5py.File(partial, "a", locking=False) as f:
        if "tiles_done" not in f.attrs:
            f.attrs.update(identity)
            f.attrs.update(checkpoint=str(loaded.checkpoint), tiles_done=0)
            _write_index(f, store)
        done = int(f.attrs["tiles_done"])
        if done:
            log.info("resuming %s at tile %d of %d", partial, done, store.n_tiles)
        for start in range(done, store.n_tiles, cfg.chunk_tiles):
            stop = min(store.n_tiles, start + cfg.chunk_tiles)
            feats = extract_features(
                encoder,
                StoreSource(store, np.arange(start, stop)),
                train_cfg.augment,
                size,
                cfg.batch_size,
                f"embed tiles {start}-{stop}",
            )
            if "features" not in f:
                f.create_dataset(
                    "features",
                    shape=(store.n_tiles, feats.shape[1]),
                    dtype=cfg.dtype,
                    chunks=(min(1024, store.n_tiles), feats.shape[1]),
                )
                f.attrs["dim"] = feats.shape[1]
            f["features"][start:stop] = feats.astype(cfg.dtype)
            f.attrs["tiles_done"] = stop  # only after the rows: a crash redoes this chunk
            f.flush()
            rate = (stop - done) / max(time.time() - started, 1e-9)
            log.info(
                "embedded %d/%d tiles (%.0f tiles/s, ETA %.0f s)",
                stop,
                store.n_tiles,
                rate,
                (store.n_tiles - stop) / rate,
            )
    _finish(partial, out)
    return {**summary, "skipped": False, "seconds": round(time.time() - started, 1)}


def write_clam_layout(features_file: str | Path, out_dir: str | Path) -> dict:
    """One ``<out_dir>/<shard name>.h5`` per slide (CLAM / TRIDENT layout) from a finished
    features file: ``features`` (N×d), ``coords`` (N×2 int64, level 0) and the slide's attrs.
    Each file is written under a temporary name and renamed; a file already there from the same
    features file (same checkpoint step and rows) is kept."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = kept = 0
    with h5py.File(features_file, "r", locking=False) as src:
        offsets = src["shard_offsets"][:]
        names = [n.decode() if isinstance(n, bytes) else n for n in src["shard_names"][:]]
        slides = [n.decode() if isinstance(n, bytes) else n for n in src["slide_ids"][:]]
        step = int(src.attrs["checkpoint_step"])
        for name, slide, lo, hi in zip(names, slides, offsets[:-1], offsets[1:]):
            target = out_dir / (Path(name).stem + ".h5")
            if _slide_file_matches(target, step, int(hi - lo)):
                kept += 1
                continue
            with atomic_path(target) as tmp, h5py.File(tmp, "w", locking=False) as f:
                f["features"] = src["features"][lo:hi]
                f["coords"] = src["coords"][lo:hi]
                f.attrs.update(slide_id=slide, checkpoint_step=step, arch=src.attrs["arch"])
            written += 1
    return {"clam_dir": str(out_dir), "slides_written": written, "slides_kept": kept}


def _slide_file_matches(path: Path, step: int, rows: int) -> bool:
    try:
        with h5py.File(path, "r", locking=False) as f:
            return int(f.attrs["checkpoint_step"]) == step and f["features"].shape[0] == rows
    except (OSError, KeyError):
        return False
