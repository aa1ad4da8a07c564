"""``python -m dcssl.cluster RUN_DIR --epoch E [--config Y] [key=value …]``

Works alone, under ``mpiexec -n R`` and under ``srun --mpi=pmi2 -n R``. Overrides may be written
``cluster.k=3000`` or just ``k=3000``; overrides of other sections are refused (exit 2).

This is the stage's one entry point (slurm/cluster.sbatch, the local executor, submitit jobs):
labels, then the epoch's summary (metrics.jsonl, charts/progress.png, RUN/report/) and the pruning of old
feature banks (``loop.keep_features``) — all under the run lock, held by rank 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from contextlib import ExitStack
from pathlib import Path

from dcssl.config import ConfigError
from dcssl.paths import RunPaths
from dcssl.runlock import RunInUse, hold_stage
from hpc.checkpoint import report_disk_full

from .config import ClusterConfig

_FIELDS = {f.name for f in dataclasses.fields(ClusterConfig)}


def _own_overrides(items: list[str]) -> list[str]:
    out = []
    for item in items:
        key = item.split("=", 1)[0]
        if key.startswith("cluster."):
            out.append(item)
        elif key.split(".", 1)[0] in _FIELDS:
            out.append("cluster." + item)
        else:
            raise ConfigError(f"{item!r}: this stage takes cluster.key=value (or key=value) overrides only")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dcssl.cluster", description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", type=Path, help="the run directory")
    parser.add_argument("--epoch", type=int, required=True, help="epoch whose features to cluster")
    parser.add_argument("--config", type=Path, default=None, help="YAML overriding RUN_DIR/config.yaml")
    parser.add_argument("overrides", nargs="*", help="cluster.key=value (or key=value)")
    args = parser.parse_intermixed_args(argv)
    from hpc.mpi import world

    comm = world()
    rank = comm.Get_rank()
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s [cluster r{rank}] %(levelname)s %(message)s",
    )
    try:
        if args.epoch < 0:
            raise ConfigError(f"--epoch {args.epoch}: must be ≥ 0")
        from dcssl.epochs.features import bank_rows
        from dcssl.fits import check_fits
        from dcssl.pipeline.steps import Step
        from dcssl.settings import load_step_config

        own = _own_overrides(args.overrides)
        whole = load_step_config(args.run_dir, Step("cluster", args.epoch).name, args.config, own)
        rows = bank_rows(args.run_dir, args.epoch, missing_ok=True)  # None: run_cluster says what is missing
        if rows is not None:
            check_fits(whole, rows, f"epoch {args.epoch}'s features", "cluster")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    with ExitStack() as held:
        refusal = None
        if rank == 0:  # one rank holds the run lock for the whole job, publishing included
            try:
                held.enter_context(hold_stage(args.run_dir, f"cluster-{args.epoch:04d}"))
            except RunInUse as err:
                refusal = str(err)
        if comm.bcast(refusal, root=0):
            if rank == 0:
                print(f"error: {refusal}", file=sys.stderr)
            return 2
        try:
            return _cluster_and_publish(args.run_dir, args.epoch, whole, comm)
        except OSError as err:
            return report_disk_full(err, Path(args.run_dir))


def _cluster_and_publish(run_dir: Path, epoch: int, whole, comm) -> int:
    """Labels of ``epoch``, then (rank 0) its summary in metrics.jsonl and the chart, and the
    pruning of feature banks older than ``loop.keep_features``."""
    from dcssl.pipeline.report import publish_epoch
    from dcssl.pipeline.steps import prune_features, redraw_report

    from .job import run_cluster
    from .reuse import reclusters, reuse_previous

    try:
        if reclusters(epoch, whole.loop.recluster_every):
            run_cluster(run_dir, epoch, whole.cluster, comm)
        else:
            reuse_previous(Path(run_dir), epoch, comm)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        if comm.Get_size() > 1:
            comm.Abort(1)  # other ranks may wait in a collective forever
        return 1
    if comm.Get_rank() == 0:
        paths = RunPaths(Path(run_dir))
        publish_epoch(paths, epoch)
        redraw_report(run_dir, epoch)
        prune_features(paths, epoch, whole.loop.keep_features)
    return 0


if __name__ == "__main__":
    from dcssl.interrupt import run_interruptible

    sys.exit(run_interruptible(main, "dcssl.cluster"))
