"""The tile store: one HDF5 shard per slide, a manifest giving the global tile index, a ledger.

Layout (see DESIGN.md)::

    store/shards/<shard>.h5   tiles   vlen uint8 (JPEG bytes)  or  N×H×W×3 uint8 (raw)
                              coords  N×2 int64, level-0 x,y of each tile's top-left (CLAM order)
                              tissue  N float32, tissue fraction of each tile
                              labels  N int64 (optional: pre-tiled, labelled inputs)
                              crc32   N uint32, CRC32 of each tile's stored bytes (checked on read)
                              blur, pen  N float32 (optional: per-tile QC, see dcssl.tile.qc)
                              overview/{thumbnail, mask, dropped}  (optional, slides only): a
                                      small JPEG of the slide, its tissue mask as PNG, and
                                      the level-0 x,y of candidates dropped as background
                              attrs   slide_id, mpp, tile_size, level, source_md5, encoding, n_tiles
    store/shards/<shard>.h5.sha256   the shard's SHA-256, written before the shard is renamed
    store/manifest.json       shards in global-index order with tile counts, offsets and SHA-256
    store/ledger.jsonl        one JSON line per slide attempt

A shard is written under a temporary name and renamed when complete, so a shard that exists is
whole. The global index of tile j of shard i is ``offsets[i] + j``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from dcssl.jsonl import append_jsonl, read_jsonl
from hpc.checkpoint import atomic_path, atomic_write_text, temp_files
from hpc.config import ConfigError, read_text_file
from hpc.integrity import DamagedFile, crc32, read_sidecar

__all__ = [
    "ShardInfo",
    "ShardWriter",
    "Store",
    "build_manifest",
    "shard_name",
    "append_ledger",
    "read_ledger",
    "latest_attempts",
    "decode_tile",
    "encode_jpeg",
    "open_h5",
    "FORMAT_VERSION",
    "tile_crcs",
    "check_tiles",
]

FORMAT_VERSION = 1
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def shard_name(slide_id: str) -> str:
    """A file-system- and shell-safe shard file name for any slide id (spaces, quotes, ';' …).

    Unsafe characters become '_' and a short hash of the original keeps distinct ids distinct.
    """
    safe = _SAFE.sub("_", slide_id).strip("._") or "slide"
    if safe != slide_id:
        safe = f"{safe[:80]}-{hashlib.sha1(slide_id.encode()).hexdigest()[:8]}"
    return f"{safe}.h5"


def open_h5(path: str | Path, mode: str = "r", locking: bool | None = None) -> h5py.File:
    """Open an HDF5 file; ``locking=False`` for NFS/Lustre where POSIX locks hang or fail."""
    if locking is None:
        locking = os.environ.get("HDF5_USE_FILE_LOCKING", "").upper() != "FALSE"
    return h5py.File(path, mode, locking=locking)


def encode_jpeg(tile: np.ndarray, quality: int = 85) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(tile).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def decode_tile(encoded: Any) -> np.ndarray:
    """H×W×3 uint8 from JPEG bytes (a uint8 vector) or a raw tile (passed through)."""
    array = np.asarray(encoded)
    if array.ndim == 3:
        return array
    from PIL import Image

    with Image.open(io.BytesIO(array.tobytes())) as image:
        return np.asarray(image.convert("RGB"))


def tile_crcs(tiles: Sequence[Any] | np.ndarray) -> np.ndarray:
    """CRC32 of each tile's stored bytes (a JPEG byte vector or one raw H×W×3 tile)."""
    return np.fromiter(
        (crc32(np.ascontiguousarray(t).data) for t in tiles), dtype=np.uint32, count=len(tiles)
    )


def check_tiles(
    path: Path, rows: np.ndarray, tiles: Sequence[Any] | np.ndarray, recorded: np.ndarray
) -> None:
    """DamagedFile naming the first tile of ``rows`` whose bytes differ from its stored CRC32."""
    bad = np.flatnonzero(tile_crcs(tiles) != recorded)
    if bad.size:
        raise DamagedFile(
            path,
            f"tile {int(rows[bad[0]])} fails its CRC32 ({bad.size} of {len(rows)} read); "
            "the shard is damaged — restore it or tile its slide again",
        )


class ShardWriter:
    """Write one shard; it appears under its final name only if the ``with`` block succeeds."""

    def __init__(
        self,
        path: str | Path,
        *,
        slide_id: str,
        tile_size: int,
        encoding: str = "jpeg",
        mpp: float = float("nan"),
        level: int = 0,
        source_md5: str = "",
        with_labels: bool = False,
        qc_columns: tuple[str, ...] = (),
        attrs: dict | None = None,
    ):
        if encoding not in ("jpeg", "raw"):
            raise ValueError(f"encoding must be 'jpeg' or 'raw', got {encoding!r}")
        self.path = Path(path)
        self.encoding = encoding
        self.tile_size = tile_size
        self.with_labels = with_labels
        self.qc_columns = qc_columns
        self.attrs = dict(
            slide_id=slide_id,
            tile_size=tile_size,
            encoding=encoding,
            mpp=mpp,
            level=level,
            source_md5=source_md5,
            format_version=FORMAT_VERSION,
            **(attrs or {}),
        )
        self.n_tiles = 0
        self._ctx = None
        self._file: h5py.File | None = None

    def __enter__(self) -> ShardWriter:
        for stale in temp_files(self.path):  # a killed earlier attempt at this slide
            stale.unlink(missing_ok=True)
        self._ctx = atomic_path(self.path, sidecar=True)
        tmp = self._ctx.__enter__()
        self._file = h5py.File(tmp, "w", locking=False)
        f, size = self._file, self.tile_size
        if self.encoding == "jpeg":
            f.create_dataset(
                "tiles", shape=(0,), maxshape=(None,), chunks=(64,), dtype=h5py.vlen_dtype(np.uint8)
            )
        else:
            f.create_dataset(
                "tiles",
                shape=(0, size, size, 3),
                maxshape=(None, size, size, 3),
                chunks=(1, size, size, 3),
                dtype=np.uint8,
            )
        f.create_dataset("coords", shape=(0, 2), maxshape=(None, 2), chunks=(1024, 2), dtype=np.int64)
        f.create_dataset("tissue", shape=(0,), maxshape=(None,), chunks=(1024,), dtype=np.float32)
        f.create_dataset("crc32", shape=(0,), maxshape=(None,), chunks=(1024,), dtype=np.uint32)
        if self.with_labels:
            f.create_dataset("labels", shape=(0,), maxshape=(None,), chunks=(1024,), dtype=np.int64)
        for name in self.qc_columns:
            f.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(1024,), dtype=np.float32)
        return self

    def put(self, name: str, data: np.ndarray, **attrs) -> None:
        """A whole dataset written once (e.g. ``overview/thumbnail`` JPEG bytes as uint8)."""
        dataset = self._file.create_dataset(name, data=np.asarray(data))
        dataset.attrs.update(attrs)

    def append(
        self,
        tiles: Sequence[bytes] | np.ndarray,
        coords: np.ndarray,
        tissue: np.ndarray,
        labels: np.ndarray | None = None,
        qc: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Add a batch: JPEG byte strings (jpeg) or a k×H×W×3 uint8 array (raw); ``qc`` holds
        one array per name in ``qc_columns``."""
        k = len(tiles)
        if k == 0:
            return
        f, start = self._file, self.n_tiles
        for name in ("tiles", "coords", "tissue", "crc32", *self.qc_columns) + (
            ("labels",) if self.with_labels else ()
        ):
            f[name].resize(start + k, axis=0)
        for name in self.qc_columns:
            f[name][start : start + k] = np.asarray(qc[name], dtype=np.float32)
        if self.encoding == "jpeg":
            stored = [np.frombuffer(t, dtype=np.uint8) for t in tiles]
        else:
            stored = np.asarray(tiles, dtype=np.uint8)
        f["tiles"][start : start + k] = stored
        f["crc32"][start : start + k] = tile_crcs(stored)
        f["coords"][start : start + k] = np.asarray(coords, dtype=np.int64).reshape(k, 2)
        f["tissue"][start : start + k] = np.asarray(tissue, dtype=np.float32)
        if self.with_labels:
            f["labels"][start : start + k] = np.asarray(labels, dtype=np.int64)
        self.n_tiles += k

    def __exit__(self, exc_type, exc, tb) -> None:
        f, self._file = self._file, None
        if exc_type is None:
            f.attrs.update(self.attrs)
            f.attrs["n_tiles"] = self.n_tiles
        f.close()
        self._ctx.__exit__(exc_type, exc, tb)


@dataclass(frozen=True)
class ShardInfo:
    name: str
    """Shard file name under store/shards/."""
    slide_id: str
    n_tiles: int
    offset: int
    """Global index of the shard's first tile."""
    source_md5: str = ""
    sha256: str = ""
    """The shard file's SHA-256 (from its sidecar; empty for shards written before checksums)."""


def _read_info(path: Path, offset: int) -> ShardInfo:
    with open_h5(path, locking=False) as f:
        return ShardInfo(
            name=path.name,
            slide_id=str(f.attrs.get("slide_id", path.stem)),
            n_tiles=int(f["coords"].shape[0]),
            offset=offset,
            source_md5=str(f.attrs.get("source_md5", "")),
            sha256=read_sidecar(path) or "",
        )


def build_manifest(root: str | Path, names: Iterable[str] | None = None) -> Store:
    """Index the complete shards (sorted by file name, or in the order given) into manifest.json."""
    root = Path(root)
    shard_dir = root / "shards"
    if names is None:
        names = sorted(p.name for p in shard_dir.glob("*.h5")) if shard_dir.is_dir() else []
    infos, offset = [], 0
    for name in names:
        info = _read_info(shard_dir / name, offset)
        infos.append(info)
        offset += info.n_tiles
    document = {"format_version": FORMAT_VERSION, "n_tiles": offset, "shards": [asdict(i) for i in infos]}
    atomic_write_text(root / "manifest.json", json.dumps(document, indent=1))
    return Store(root)


class Store:
    """Read side: the manifest, global index ↔ (shard, row), and per-shard HDF5 access."""

    def __init__(self, root: str | Path, locking: bool | None = None):
        self.root = Path(root)
        manifest = self.root / "manifest.json"
        if not manifest.is_file():
            raise FileNotFoundError(f"{manifest}: no tile store manifest; tile or ingest first")
        text = read_text_file(manifest)
        try:
            document = json.loads(text)
            self.shards = [ShardInfo(**s) for s in document["shards"]]
        except (ValueError, KeyError, TypeError):
            raise ConfigError(f"{manifest}: not a tile store manifest; tile or ingest again") from None
        self.offsets = np.array([s.offset for s in self.shards] + [document["n_tiles"]], dtype=np.int64)
        self.n_tiles = int(document["n_tiles"])
        self.locking = locking

    def __len__(self) -> int:
        return self.n_tiles

    def shard_path(self, shard: int) -> Path:
        return self.root / "shards" / self.shards[shard].name

    def locate(self, index: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        """(shard number, row within shard) for global indices."""
        index = np.asarray(index, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= self.n_tiles):
            raise IndexError(f"tile index out of range [0, {self.n_tiles})")
        shard = np.searchsorted(self.offsets, index, side="right") - 1
        return shard, index - self.offsets[shard]

    def open_shard(self, shard: int) -> h5py.File:
        return open_h5(self.shard_path(shard), locking=self.locking)

    def read_tile(self, index: int) -> np.ndarray:
        """Decode one tile by global index (convenience; datasets keep files open instead)."""
        shard, row = self.locate(index)
        with self.open_shard(int(shard)) as f:
            tile = f["tiles"][int(row)]
            if "crc32" in f:
                check_tiles(self.shard_path(int(shard)), np.array([row]), [tile], f["crc32"][[int(row)]])
            return decode_tile(tile)

    def labels(self) -> np.ndarray | None:
        """Stored class labels by global index, or None if any shard has none."""
        out = np.empty(self.n_tiles, dtype=np.int64)
        for i, info in enumerate(self.shards):
            with self.open_shard(i) as f:
                if "labels" not in f:
                    return None
                out[info.offset : info.offset + info.n_tiles] = f["labels"][:]
        return out


def append_ledger(root: str | Path, record: dict) -> None:
    """One JSON line per slide attempt in ``root/ledger.jsonl``."""
    append_jsonl(Path(root) / "ledger.jsonl", record)


def read_ledger(root: str | Path) -> list[dict]:
    return read_jsonl(Path(root) / "ledger.jsonl")


def latest_attempts(root: str | Path) -> dict[str, dict]:
    """The most recent ledger record of each slide."""
    latest: dict[str, dict] = {}
    for record in read_ledger(root):
        latest[record.get("slide", "?")] = record
    return latest
