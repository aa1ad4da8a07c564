"""``launch train RUN_DIR``: the DeepCluster loop, locally or chained on SLURM, resumable."""

from __future__ import annotations

import argparse
import logging

from dcssl.config import save_run_config
from dcssl.epochs.labels import verify as verify_labels
from dcssl.fits import check_fits, store_tiles
from dcssl.jsonl import read_jsonl
from dcssl.launch.common import (
    UsageError,
    add_run_arguments,
    existing_run_dir,
    hold_run_or_refuse,
    refuse_live_chain,
    request,
)
from dcssl.paths import RunPaths
from dcssl.pipeline.local import StepFailed, run_local
from dcssl.pipeline.report import draw_progress, epoch_table
from dcssl.pipeline.slurm import submit_chain, wait_chain
from dcssl.pipeline.state import RunState
from dcssl.pipeline.steps import Step, pending_steps
from dcssl.settings import write_records
from dcssl.train.segment import SegmentError, resume_point
from hpc.integrity import DamagedFile

log = logging.getLogger("dcssl.launch.train")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument(
        "--executor",
        choices=["local", "slurm"],
        default=None,
        help="override executor_train.kind and executor_cluster.kind",
    )
    parser.add_argument("--epochs", type=int, default=None, help="override loop.epochs")
    parser.add_argument(
        "--wait",
        action="store_true",
        help="slurm: stay and report until the chain finishes (local always waits)",
    )


def resolve(args: argparse.Namespace):
    """Validate everything before anything is written."""
    paths = RunPaths(existing_run_dir(args.run_dir))
    if not paths.manifest.is_file():
        raise UsageError(
            f"{paths.manifest}: no tile store in this run; run "
            f"`python -m dcssl.launch tile {paths.root} --slides …` first"
        )
    extra = [f"executor_{kind}.kind={args.executor}" for kind in ("train", "cluster") if args.executor]
    extra += [f"loop.epochs={args.epochs}"] if args.epochs is not None else []
    cfg = request(args, extra)
    check_fits(cfg, store_tiles(paths.store), f"the store {paths.store}")
    return paths, cfg


def check_inputs(paths: RunPaths, pending: list[Step], keep: int) -> None:
    """UsageError before anything runs when a pending train segment would start from damaged
    state: no intact checkpoint for the finished epochs, or damaged labels to train on."""
    train = [s for s in pending if s.kind == "train"]
    if not train:
        return
    try:
        resume_point(paths.root, keep)
        first = train[0].epoch
        if first >= 1 and paths.labels_complete(first - 1):
            verify_labels(paths.root, first - 1)
    except SegmentError as err:
        raise UsageError(str(err)) from None
    except DamagedFile as err:
        raise UsageError(
            f"{err}; re-run that clustering: python -m dcssl.launch cluster {paths.root} "
            f"--epoch {train[0].epoch - 1} --redo"
        ) from None


def _report(paths: RunPaths) -> None:
    for row in epoch_table(read_jsonl(paths.metrics)):
        print(row)
    chart = draw_progress(paths, read_jsonl(paths.metrics))
    print(f"chart: {chart}\nmetrics: {paths.metrics}")


def run_loop(paths: RunPaths, cfg, wait: bool = True) -> int:
    """Run (or submit) every unfinished step; 0 when all are done (or submitted). The request
    becomes the run's config.yaml only then; each step runs with (and keeps) its own record."""
    with hold_run_or_refuse(paths, "launch train") as lock:
        pending: list[Step] = pending_steps(paths, cfg.loop.epochs)
        state = RunState(paths)
        refuse_live_chain(paths, pending, state)
        check_inputs(paths, pending, cfg.train.keep_checkpoints)
        if not pending:
            log.info("all %d epochs are done; nothing to run", cfg.loop.epochs)
            save_run_config(paths.root, cfg)
            return 0
        write_records(paths, [s.name for s in pending], cfg)
        executors = {"train": cfg.executor_train, "cluster": cfg.executor_cluster}
        log.info("%d step(s) to run, from %s", len(pending), pending[0].name)
        if cfg.executor_train.kind == "local":
            try:
                run_local(pending, paths, executors, state, lock)
            except StepFailed as err:
                log.error("%s", err)
                return 1
            save_run_config(paths.root, cfg)
            _report(paths)
            return 0
        submit_chain(pending, paths, executors, state, lock)
    # from here the chain holds the run: each job takes the lock, its queue entries refuse others
    if not wait:
        save_run_config(paths.root, cfg)
        log.info("chain submitted; watch it with `python -m dcssl.launch status %s`", paths.root)
        return 0
    if not wait_chain(pending, paths, RunState(paths)):
        return 1
    save_run_config(paths.root, cfg)
    _report(paths)
    return 0


def run(args: argparse.Namespace) -> int:
    paths, cfg = resolve(args)
    return run_loop(paths, cfg, wait=args.wait)
