"""``launch curate RUN [curate.per_cluster=N …]``: a diverse subset, evenly across distance bins."""

from __future__ import annotations

import argparse

from dcssl.evaluate.curate import CurateError, curate_run
from dcssl.launch.common import (
    UsageError,
    add_run_arguments,
    check_overrides,
    existing_run_dir,
    hold_run_or_refuse,
    print_json_line,
    request,
)
from dcssl.paths import RunPaths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument(
        "--per-cluster", type=int, default=None, help="tiles per cluster (overrides curate.per_cluster)"
    )


def run(args: argparse.Namespace) -> int:
    run_dir = existing_run_dir(args.run_dir)
    check_overrides(args.overrides, ("curate",))
    extra = [f"curate.per_cluster={args.per_cluster}"] if args.per_cluster is not None else []
    cfg = request(args, extra).curate
    try:
        with hold_run_or_refuse(RunPaths(run_dir), "launch curate"):  # it writes RUN/curated/
            document = curate_run(run_dir, cfg)
    except (CurateError, FileNotFoundError) as err:
        raise UsageError(str(err)) from None
    print(
        f"curated {document['n_tiles']} tiles from {document['n_clusters']} clusters of epoch "
        f"{document['epoch']}: {RunPaths(run_dir).curated_manifest}"
    )
    print_json_line(
        {k: document[k] for k in ("n_tiles", "n_clusters", "epoch", "per_cluster", "bins", "store")}
    )
    return 0
