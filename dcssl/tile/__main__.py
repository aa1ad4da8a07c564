"""``python -m dcssl.tile RUN_DIR --index I [tile.key=value …]``: one array element.

What ``slurm/tile.sbatch`` runs with ``$SLURM_ARRAY_TASK_ID``. Also:

    python -m dcssl.tile RUN_DIR --prepare SLIDES   write the slide list; print how many slides
    python -m dcssl.tile RUN_DIR --finalize         write store/manifest.json now

Exit status: 0 the slide is tiled (or was already), 1 it failed (see store/ledger.jsonl), 2 a
usage or configuration mistake, or the run is in use (an element holds the run lock shared with
the other elements of its array; prepare and finalize hold it exclusively).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dcssl.config import ConfigError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dcssl.tile", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--index", type=int, help="tile slide I of RUN_DIR/tile/slides.json")
    what.add_argument(
        "--prepare", metavar="SLIDES", help="resolve a folder, glob or GDC manifest into the slide list"
    )
    what.add_argument("--finalize", action="store_true", help="write the store manifest")
    parser.add_argument("--config", type=Path, default=None, help="YAML config (section tile)")
    parser.add_argument("overrides", nargs="*", default=[], metavar="tile.key=value")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    from dcssl.config import load_run_config
    from dcssl.runlock import RunInUse, hold_stage
    from dcssl.slides.sources import SourceError
    from dcssl.tile import run as tile_run
    from dcssl.tile.prepare import prepare_run

    try:
        if args.prepare is not None:
            cfg = load_run_config(args.run_dir, args.config, args.overrides)
            with hold_stage(args.run_dir, "tile-prepare"):
                refs = prepare_run(args.run_dir, args.prepare, cfg)
            print(len(refs))
            return 0
        if args.finalize:
            with hold_stage(args.run_dir, "tile-finalize"):
                store = tile_run.finalize(args.run_dir)
            print(f"{store.root / 'manifest.json'}: {len(store.shards)} shards, {store.n_tiles} tiles")
            return 0
        record = tile_run.tile_element(args.run_dir, args.index, args.config, args.overrides)
    except (ConfigError, SourceError, IndexError, RunInUse) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0 if record["status"] == "ok" else 1


if __name__ == "__main__":
    from dcssl.interrupt import run_interruptible

    sys.exit(run_interruptible(main, "dcssl.tile"))
