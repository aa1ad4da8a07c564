"""The tile stage over many slides: the slide list, one array element per slide, the manifest.

Layout in a run directory::

    tile/slides.json          the resolved slide list; array element I tiles slide I
    store/shards/<name>.h5    one per slide (dcssl.store.shard_name), complete or absent
    store/ledger.jsonl        one line per attempt: slide, status, stage, reason, tiles, errors …
    store/manifest.json       written once by ``finalize`` after the array (see below)
    logs/tile/                submitit logs

An element skips a slide whose shard exists, removes its own stale temp files (a kill -9 earlier),
downloads when the slide is remote (then deletes it), tiles, and records the attempt — its own
shard and one ledger line, O(1) whatever the number of slides: no element reads the ledger or
looks at the other shards (at 11,000 slides that was O(S²) file-system work over the array).
The manifest is built once, by ``finalize``: a job that depends on the whole array (``launch
tile`` submits it), or ``launch tile --wait``/local, a re-run of ``launch tile``, or ``launch
status`` once nothing is pending and the manifest is older than the ledger (``maybe_finalize``).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from dcssl.config import load_run_config
from dcssl.paths import RunPaths
from dcssl.runlock import hold_element, hold_stage
from dcssl.slides.gdc import DownloadError, download_slide, read_token, scratch_root
from dcssl.slides.sources import SlideRef, load_slide_list
from dcssl.store import append_ledger, build_manifest, latest_attempts, shard_name
from dcssl.tile.config import TileConfig
from dcssl.tile.worker import SlideFailure, effective_workers, tile_slide

__all__ = [
    "tile_element",
    "pending_indices",
    "finalize",
    "manifest_due",
    "maybe_finalize",
    "FinalizeTask",
    "Summary",
    "summarize",
    "file_md5",
]

log = logging.getLogger(__name__)


def file_md5(path: str | Path, chunk: int = 8 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _remove_stale_temps(shard: Path) -> None:
    """Temp files of this shard left by a killed attempt (this element owns the slide now)."""
    if shard.parent.is_dir():
        for stale in shard.parent.glob(f".{shard.name}.*.tmp"):
            stale.unlink(missing_ok=True)


def _scratch_folder(cfg: TileConfig, paths: RunPaths, ref: SlideRef) -> Path:
    run_key = hashlib.sha1(str(paths.root.resolve()).encode()).hexdigest()[:10]
    user = os.environ.get("USER") or str(os.getuid())
    return scratch_root(cfg.download) / f"dcssl-{user}" / f"{run_key}-{shard_name(ref.slide_id)[:-3]}"


def _tile_one(ref: SlideRef, cfg: TileConfig, paths: RunPaths) -> dict:
    """Tile one slide; the ledger record (without time)."""
    shard = paths.shard(ref.slide_id)
    _remove_stale_temps(shard)
    scratch = None
    try:
        if ref.remote:
            scratch = _scratch_folder(cfg, paths, ref)
            try:
                local = download_slide(ref, scratch, cfg.download, read_token(cfg.download.token_file))
            except DownloadError as err:
                raise SlideFailure("download", str(err)) from None
            md5 = ref.md5 or ""
        else:
            local = Path(ref.path or "")
            md5 = file_md5(local) if cfg.hash_local and local.is_file() else ""
        result = tile_slide(local, shard, ref.slide_id, cfg, source_md5=md5, workers=effective_workers(cfg))
        return dict(
            status="ok",
            stage="done",
            reason=result.note,
            tiles=result.tiles,
            errors=result.errors,
            candidates=result.candidates,
            level=result.level,
            mpp=result.mpp,
            mpp_source=result.mpp_source,
        )
    finally:
        if scratch is not None:
            # delete the download whatever happened: the disk budget holds one slide per task
            # (a .part of an interrupted download is kept only if the process itself dies)
            shutil.rmtree(scratch, ignore_errors=True)


def _ensure_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )


def tile_element(
    run_dir: str | Path,
    index: int,
    config_path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> dict:
    """Array element ``index``: tile slide ``index`` of the run's slide list; its ledger record.

    A failed slide is recorded (status failed, stage, reason) and returned, not raised: one bad
    slide must not fail the array element's bookkeeping.
    """
    _ensure_logging()
    paths = RunPaths(Path(run_dir))
    cfg = load_run_config(paths.root, config_path, list(overrides)).tile
    refs = load_slide_list(paths.slide_list)
    if not 0 <= index < len(refs):
        raise IndexError(
            f"index {index} is outside the slide list (0..{len(refs) - 1}) of {paths.slide_list}"
        )
    with hold_element(paths.root):  # shared: the other elements run too, no other writer does
        return _tile_index(paths, refs[index], index, cfg)


def _tile_index(paths: RunPaths, ref: SlideRef, index: int, cfg: TileConfig) -> dict:
    if paths.shard(ref.slide_id).is_file():
        log.info("%s: shard exists, skipping", ref.slide_id)
        return dict(slide=ref.slide_id, index=index, status="ok", stage="done", skipped=True)
    start = time.monotonic()
    try:
        record = _tile_one(ref, cfg, paths)
    except SlideFailure as err:
        record = dict(status="failed", stage=err.stage, reason=err.reason, tiles=0, errors=0)
    except Exception as err:  # an unforeseen bug must still land in the ledger, with its type
        log.error("%s: unexpected error\n%s", ref.slide_id, traceback.format_exc())
        record = dict(
            status="failed", stage="internal", reason=f"{type(err).__name__}: {err}", tiles=0, errors=0
        )
    record = dict(
        slide=ref.slide_id,
        index=index,
        **record,
        seconds=round(time.monotonic() - start, 2),
        host=socket.gethostname(),
        job=os.environ.get("SLURM_JOB_ID") or os.environ.get("SUBMITIT_LOCAL_JOB_ID"),
    )
    append_ledger(paths.store, record)
    level = logging.INFO if record["status"] == "ok" else logging.ERROR
    log.log(
        level,
        "%s: %s %s%s (%d tiles, %.1f s)",
        ref.slide_id,
        record["status"],
        record["stage"],
        f": {record['reason']}" if record.get("reason") else "",
        record["tiles"],
        record["seconds"],
    )
    return record


def pending_indices(run_dir: str | Path, refs: list[SlideRef]) -> list[int]:
    """Slides without a complete shard (never tried, failed, or killed mid-way)."""
    paths = RunPaths(Path(run_dir))
    present = set(os.listdir(paths.shards)) if paths.shards.is_dir() else set()
    return [i for i, ref in enumerate(refs) if shard_name(ref.slide_id) not in present]


def _manifest_order(paths: RunPaths, refs: list[SlideRef]) -> list[str]:
    """Slide-list order (stable global index), then shards not from the list (ingested)."""
    present = {p.name for p in paths.shards.glob("*.h5")} if paths.shards.is_dir() else set()
    ordered = [shard_name(r.slide_id) for r in refs if shard_name(r.slide_id) in present]
    return ordered + sorted(present - set(ordered))


class FinalizeTask:
    """The job after the tile array (picklable for submitit): build the manifest once."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = str(Path(run_dir).resolve())

    def __call__(self) -> int:
        _ensure_logging()
        with hold_stage(self.run_dir, "tile-finalize"):
            store = finalize(self.run_dir)
        log.info("wrote the store manifest: %d shards, %d tiles", len(store.shards), store.n_tiles)
        return store.n_tiles


def finalize(run_dir: str | Path, refs: list[SlideRef] | None = None):
    """Write store/manifest.json over the complete shards; returns the Store."""
    paths = RunPaths(Path(run_dir))
    if refs is None:
        refs = load_slide_list(paths.slide_list) if paths.slide_list.is_file() else []
    paths.shards.mkdir(parents=True, exist_ok=True)
    return build_manifest(paths.store, _manifest_order(paths, refs))


def manifest_due(run_dir: str | Path, summary: Summary) -> bool:
    """Every slide was attempted and the ledger changed since the last manifest (an array that
    ended without its finalize job, e.g. plain sbatch)."""
    paths = RunPaths(Path(run_dir))
    ledger = paths.store / "ledger.jsonl"
    if summary.pending or not ledger.is_file():
        return False
    return not (paths.manifest.is_file() and paths.manifest.stat().st_mtime_ns >= ledger.stat().st_mtime_ns)


def maybe_finalize(run_dir: str | Path, summary: Summary) -> bool:
    """Build the manifest when ``manifest_due``; the caller holds the run lock."""
    if not manifest_due(run_dir, summary):
        return False
    finalize(run_dir)
    log.info(
        "all %d slides attempted: %d done, %d failed, %d tiles; wrote the store manifest",
        summary.slides,
        summary.done,
        len(summary.failed),
        summary.tiles,
    )
    return True


@dataclass
class Summary:
    slides: int = 0
    done: int = 0
    pending: int = 0
    tiles: int = 0
    failed: list[dict] = field(default_factory=list)
    """{"slide", "stage", "reason"} of slides whose latest attempt failed."""
    notes: list[dict] = field(default_factory=list)
    """{"slide", "reason"} of done slides with something to say (no tissue, skipped tiles)."""


def _shard_tiles(path: Path) -> int:
    from dcssl.store import open_h5

    with open_h5(path, locking=False) as f:
        return int(f.attrs.get("n_tiles", f["coords"].shape[0]))


def summarize(run_dir: str | Path, refs: list[SlideRef] | None = None) -> Summary:
    """Done / failed / pending over the slide list, from the shards and the ledger (one listing of
    the shard folder and one read of the ledger, not a stat per slide)."""
    paths = RunPaths(Path(run_dir))
    if refs is None:
        refs = load_slide_list(paths.slide_list)
    latest = latest_attempts(paths.store)
    present = set(os.listdir(paths.shards)) if paths.shards.is_dir() else set()
    summary = Summary(slides=len(refs))
    for ref in refs:
        record = latest.get(ref.slide_id, {})
        if shard_name(ref.slide_id) in present:
            summary.done += 1
            tiles = record.get("tiles") if record.get("status") == "ok" else None
            summary.tiles += int(tiles) if tiles is not None else _shard_tiles(paths.shard(ref.slide_id))
            if record.get("reason"):
                summary.notes.append({"slide": ref.slide_id, "reason": record["reason"]})
        elif record.get("status") == "failed":
            summary.failed.append(
                {"slide": ref.slide_id, "stage": record.get("stage", "?"), "reason": record.get("reason", "")}
            )
        else:
            summary.pending += 1
    return summary
