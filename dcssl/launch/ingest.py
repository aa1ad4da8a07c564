"""``launch ingest RUN_DIR --tiles FOLDER``: pre-tiled images → the run's tile store.

Class sub-folders become labels (``--labels folders``), or the file-name prefix
(``--labels prefix``), or none. Tile size, encoding and JPEG quality come from section ``tile``.
A re-run skips the shards already written.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from dcssl.launch.common import UsageError, add_run_arguments, hold_run_or_refuse, request
from dcssl.paths import RunPaths
from dcssl.tile.ingest import IngestError, ingest_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument(
        "--tiles",
        required=True,
        type=Path,
        metavar="FOLDER",
        help="folder of image tiles, flat or one sub-folder per class",
    )
    parser.add_argument(
        "--labels",
        choices=["auto", "folders", "prefix", "none"],
        default="auto",
        help="where class labels come from (auto: sub-folders if any)",
    )
    parser.add_argument("--name", default=None, help="shard name prefix (default: folder name)")


def run(args: argparse.Namespace) -> int:
    cfg = request(args).tile
    paths = RunPaths(Path(args.run_dir))
    created = not paths.root.exists()
    paths.root.mkdir(parents=True, exist_ok=True)  # a new run is held before anything goes in
    with hold_run_or_refuse(paths, "launch ingest"):
        try:
            summary = ingest_folder(args.tiles, paths.store, cfg, args.labels, args.name)
        except IngestError as err:
            if created:  # a refused new run leaves nothing behind (only its lock file was written)
                shutil.rmtree(paths.root, ignore_errors=True)
            raise UsageError(str(err)) from None
    classes = ", ".join(summary["classes"]) or "none"
    print(
        f"{summary['images']} images: {summary['written']} tiles written, "
        f"{summary['unreadable']} unreadable skipped; classes: {classes}"
    )
    return 1 if summary["unreadable"] else 0
