"""``launch exclude RUN --epoch E --clusters 3,17 [--undo]``: drop artefact clusters from training.

The tiles epoch E put in those clusters are set in RUN/excluded.npy (see dcssl.exclusion): the
next train segments never draw them and the next clusterings label them -1. ``--undo`` puts them
back: the next clustering labels them again and the segment after it draws them. The report's cluster cards print this command for each cluster.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dcssl.epochs.labels import read_labels
from dcssl.exclusion import update_exclusion
from dcssl.launch.common import UsageError, existing_run_dir
from dcssl.paths import RunPaths
from dcssl.store import Store


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="the run directory")
    parser.add_argument("--epoch", type=int, required=True, help="the epoch whose cluster ids are meant")
    parser.add_argument("--clusters", required=True, help="comma-separated cluster ids, e.g. 3,17")
    parser.add_argument("--undo", action="store_true", help="put those clusters' tiles back")


def _cluster_ids(text: str) -> list[int]:
    try:
        ids = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise UsageError(
            f"--clusters {text!r}: give comma-separated integers, e.g. --clusters 3,17"
        ) from None
    if not ids or ids[0] < 0:
        raise UsageError(f"--clusters {text!r}: give one or more cluster ids ≥ 0, e.g. --clusters 3,17")
    return ids


def run(args: argparse.Namespace) -> int:
    run_dir = existing_run_dir(args.run_dir)
    clusters = _cluster_ids(args.clusters)
    paths = RunPaths(run_dir)
    if not paths.manifest.is_file():
        raise UsageError(f"{paths.store}: no tile store; tile the slides first")
    labels = read_labels(run_dir, args.epoch, Store(paths.store).n_tiles)
    if labels is None:
        raise UsageError(f"{run_dir}: epoch {args.epoch} has no complete labels; pick a clustered epoch")
    unknown = [c for c in clusters if c > int(labels.max())]
    if unknown:
        raise UsageError(
            f"--clusters: epoch {args.epoch} has no cluster {unknown[0]} (largest id {labels.max()})"
        )
    record = update_exclusion(run_dir, args.epoch, labels, clusters, undo=args.undo)
    when = "clustered again from the next clustering" if args.undo else "out from the next train segment"
    print(
        f"{'put back' if args.undo else 'excluded'} {record['tiles']} tiles of epoch {args.epoch} clusters "
        f"{record['clusters']} ({when}); {record['excluded_total']} tiles excluded in all"
    )
    return 0
