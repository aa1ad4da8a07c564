"""``launch embed RUN [--store STORE] [--out FILE] [--layout clam]``: encoder features of every
tile, in HDF5 (one file by global index; ``--layout clam``: also one features/<slide>.h5 per slide)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dcssl.evaluate.embed import default_embed_path, embed_store, write_clam_layout
from dcssl.evaluate.encoder import NoCheckpoint
from dcssl.evaluate.labelled import LabelledDataError, find_store
from dcssl.launch.common import (
    UsageError,
    add_run_arguments,
    hold_if_writing_into,
    load_configs,
    print_json_line,
    writable_folder,
)
from dcssl.paths import RunPaths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument(
        "--store",
        type=Path,
        default=None,
        help="tile store to embed (a store folder or a run directory; default the run's own store)",
    )
    parser.add_argument("--out", type=Path, default=None, help="HDF5 file (default RUN/embed/features.h5)")
    parser.add_argument(
        "--layout",
        choices=("index", "clam"),
        default="index",
        help="index: the one file by global index; clam: also features/<slide>.h5 per slide beside "
        "it (features N×d, coords N×2, as CLAM / TRIDENT write them)",
    )


def run(args: argparse.Namespace) -> int:
    run_dir, run_cfg = load_configs(args, "embed")
    out = writable_folder(args.out or default_embed_path(run_dir), "--out")
    try:
        store = find_store(args.store or run_dir)
        with hold_if_writing_into(RunPaths(run_dir), out, "launch embed"):
            summary = embed_store(run_dir, store.root, run_cfg.embed, run_cfg.train, out)
            if args.layout == "clam":
                summary.update(write_clam_layout(summary["out"], Path(summary["out"]).parent / "features"))
    except (LabelledDataError, NoCheckpoint) as err:
        raise UsageError(str(err)) from None
    print(
        f"{'kept' if summary['skipped'] else 'wrote'} {summary['out']}: "
        f"{summary['n_tiles']} tiles, checkpoint step {summary['checkpoint_step']}"
    )
    print_json_line(summary)
    return 0
