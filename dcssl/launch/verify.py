"""``launch verify RUN``: check every artefact of a run against the checksum recorded with it.

Shards (file SHA-256 and every tile's CRC32), feature banks, labels, centroids, train and cluster
checkpoints and exports. One line per damaged file, naming it and what to redo; exit 2 when any is
damaged. Read-only: works on a run one cannot write.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from dcssl.cluster.store import checkpointed_epochs
from dcssl.cluster.store import checkpoints as cluster_checkpoints
from dcssl.epochs import features, labels
from dcssl.evaluate.export import verify_export
from dcssl.launch.common import existing_run_dir
from dcssl.paths import RunPaths
from dcssl.store import Store, check_tiles, open_h5
from dcssl.train.segment import SegmentError, checkpoint_manager, resume_point
from hpc.integrity import DamagedFile, sidecar_path, verify_sidecar

_TILE_BLOCK = 4096


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="the run directory to check")


def _shards(paths: RunPaths) -> Iterator[tuple[Path, str, str]]:
    if not paths.manifest.is_file():
        return
    store = Store(paths.store)
    for i, info in enumerate(store.shards):
        path = store.shard_path(i)
        redo = f"re-tile slide {info.slide_id!r}: remove {path} and run the tile stage again"
        try:
            if not path.is_file() or (info.sha256 and not sidecar_path(path).is_file()):
                raise DamagedFile(path, "missing, or its checksum file is")
            _check_all_tiles(path)  # first: it names the tile
            if info.sha256:
                verify_sidecar(path)
        except DamagedFile as err:
            yield err.path, err.why, redo


def _check_all_tiles(path: Path) -> None:
    with open_h5(path, locking=False) as f:
        if "crc32" not in f:
            return
        tiles, crcs = f["tiles"], f["crc32"]
        for start in range(0, len(crcs), _TILE_BLOCK):
            stop = min(start + _TILE_BLOCK, len(crcs))
            check_tiles(path, np.arange(start, stop), tiles[start:stop], crcs[start:stop])


def _sealed(root: Path) -> Iterator[tuple[Path, str, str]]:
    """Every complete feature bank and labels folder, checked against its COMPLETE record."""
    paths = RunPaths(root)
    for epoch in features.complete_epochs(root):
        redo = f"redo train segment {epoch}: remove {paths.features(epoch)} and {paths.train_done(epoch)}"
        yield from _damage(features.verify, root, epoch, redo)
    for epoch in labels.complete_epochs(root):
        yield from _damage(
            labels.verify, root, epoch, f"python -m dcssl.launch cluster {root} --epoch {epoch} --redo"
        )


def _damage(check, root: Path, epoch: int, redo: str) -> Iterator[tuple[Path, str, str]]:
    try:
        check(root, epoch)
    except DamagedFile as err:
        yield err.path, err.why, redo


def _checkpoints(root: Path) -> Iterator[tuple[Path, str, str]]:
    manager = checkpoint_manager(root)
    try:
        resume_point(root)
        how = "nothing: training resumes from the newest intact checkpoint"
    except SegmentError as err:
        how = str(err).split(" — ", 1)[-1]
    for step in manager.steps():
        try:
            manager.load(step)
        except DamagedFile as err:
            yield err.path, err.why, how
    for epoch in checkpointed_epochs(root):
        ckpt = cluster_checkpoints(root, epoch, keep=2)
        for step in ckpt.steps():
            try:
                ckpt.load(step)
            except DamagedFile as err:
                yield err.path, err.why, "remove it: clustering resumes from the one before or restarts"


def _exports(root: Path) -> Iterator[tuple[Path, str, str]]:
    for out in sorted(root.glob("export/*.pt")):
        if not out.with_suffix(".json").is_file():
            continue
        try:
            verify_export(out)
        except DamagedFile as err:
            yield err.path, err.why, f"python -m dcssl.launch export {root}"


def damaged(run_dir: Path) -> list[tuple[Path, str, str]]:
    """(file, what is wrong, what to redo) for every damaged artefact of the run."""
    paths = RunPaths(run_dir)
    found = [*_shards(paths), *_sealed(run_dir)]
    return found + [*_checkpoints(run_dir), *_exports(run_dir)]


def run(args: argparse.Namespace) -> int:
    run_dir = existing_run_dir(args.run_dir)
    found = damaged(run_dir)
    for path, why, redo in found:
        print(f"damaged: {path}: {why} — to redo: {redo}")
    if found:
        print(f"{len(found)} damaged file(s) in {run_dir}")
        return 2
    print(f"{run_dir}: every checksum matches")
    return 0
