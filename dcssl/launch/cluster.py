"""``launch cluster RUN_DIR --epoch E``: cluster one epoch's features on its own (e.g. to try
another k or RCC on a finished run), with the same executors as the loop.

With ``--redo`` the overrides are one-off: they apply to this command only (recorded with the
epoch's labels, never in the run's config.yaml). The whole request is checked first; the new
labels are made beside the old ones (``RUN/.redo/cluster-E``, a small run that links the
epoch's features) and replace them only once complete.
"""

from __future__ import annotations

import argparse
import os
import shutil

from dcssl.config import save_run_config
from dcssl.epochs.features import bank_rows
from dcssl.epochs.labels import read_stats
from dcssl.fits import check_fits
from dcssl.jsonl import append_jsonl, read_jsonl
from dcssl.launch.common import (
    UsageError,
    add_run_arguments,
    check_run_files,
    existing_run_dir,
    hold_run_or_refuse,
    refuse_live_chain,
    request,
)
from dcssl.paths import RunPaths
from dcssl.pipeline.local import StepFailed, run_local
from dcssl.pipeline.report import draw_progress
from dcssl.pipeline.slurm import submit_chain, wait_chain
from dcssl.pipeline.state import RunState
from dcssl.pipeline.steps import Step
from dcssl.settings import write_records


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument("--epoch", type=int, required=True, help="whose features to cluster")
    parser.add_argument(
        "--executor", choices=["local", "slurm"], default=None, help="override executor_cluster.kind"
    )
    parser.add_argument(
        "--redo",
        action="store_true",
        help="cluster this epoch again with one-off overrides; the old labels stay until the new are complete",
    )


def _execute(step: Step, paths: RunPaths, executor, lock) -> bool:
    state = RunState(paths)
    if executor.kind == "local":
        try:
            run_local([step], paths, {"cluster": executor}, state, lock)
        except StepFailed as err:
            print(f"error: {err}")
            return False
        return True
    submit_chain([step], paths, {"cluster": executor}, state, lock)
    return wait_chain([step], paths, state)


def _scratch_run(paths: RunPaths, epoch: int) -> RunPaths:
    """A run beside the real one that sees epoch's features (and the previous labels, for NMI)."""
    scratch = RunPaths(paths.root / ".redo" / f"cluster-{epoch:04d}")
    shutil.rmtree(scratch.root, ignore_errors=True)
    for link, target in (
        (scratch.features(epoch), paths.features(epoch)),
        (scratch.labels(epoch - 1), paths.labels(epoch - 1)),
    ):
        if target.is_dir():
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(os.path.relpath(target.resolve(), link.parent.resolve()), link)
    if paths.metrics.is_file():
        shutil.copyfile(paths.metrics, scratch.metrics)
    return scratch


def _swap_in(paths: RunPaths, scratch: RunPaths, epoch: int, step: Step) -> None:
    """The complete new labels replace the old; their record and metrics join the run's."""
    old = paths.labels(epoch).with_name(f".{paths.labels(epoch).name}.replaced")
    shutil.rmtree(old, ignore_errors=True)
    if paths.labels(epoch).exists():
        os.replace(paths.labels(epoch), old)
    os.replace(scratch.labels(epoch), paths.labels(epoch))
    os.replace(scratch.settings(step.name), paths.settings(step.name))
    known = len(read_jsonl(paths.metrics))
    for record in read_jsonl(scratch.metrics)[known:]:
        append_jsonl(paths.metrics, {k: v for k, v in record.items() if k != "time"})
    draw_progress(paths, read_jsonl(paths.metrics))
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(scratch.root.parent, ignore_errors=True)


def _redo(paths: RunPaths, step: Step, cfg, lock) -> int:
    scratch = _scratch_run(paths, step.epoch)
    write_records(scratch, [step.name], cfg, one_off=True)
    if not _execute(step, scratch, cfg.executor_cluster, lock) or not scratch.labels_complete(step.epoch):
        print(
            f"error: the redo of {step.name} did not finish; the old labels are unchanged (log in {scratch.logs})"
        )
        return 1
    _swap_in(paths, scratch, step.epoch, step)
    return 0


def run(args: argparse.Namespace) -> int:
    paths = RunPaths(existing_run_dir(args.run_dir))
    if args.epoch < 0 or not paths.features_complete(args.epoch):
        raise UsageError(
            f"{paths.features(args.epoch)}: no complete features for epoch "
            f"{args.epoch}; run `launch train` first"
        )
    extra = [f"executor_cluster.kind={args.executor}"] if args.executor else []
    step = Step("cluster", args.epoch)
    if args.redo:  # one-off: the run's finished work does not constrain it, the data does
        from dcssl.config import load_run_config

        check_run_files(paths.root)
        cfg = load_run_config(paths.root, args.config, [*args.overrides, *extra])
    else:
        cfg = request(args, extra)
    # the whole request is checked before the lock is taken: a refused command writes nothing
    check_fits(cfg, bank_rows(paths.root, args.epoch), f"epoch {args.epoch}'s features", "cluster")
    with hold_run_or_refuse(paths, "launch cluster") as lock:
        refuse_live_chain(paths, [step], RunState(paths))
        if args.redo:
            code = _redo(paths, step, cfg, lock)
        else:
            if not paths.labels_complete(args.epoch):
                write_records(paths, [step.name], cfg)
            code = 0 if _execute(step, paths, cfg.executor_cluster, lock) else 1
            if code == 0:
                save_run_config(paths.root, cfg)
    if code == 0:
        print(result_line(read_stats(paths.root, args.epoch)))
    return code


def result_line(stats: dict) -> str:
    """One line a person reads: clusters found, the largest one's share, NMI, any warnings."""
    nmi = "n/a" if stats.get("nmi_prev") is None else f"{stats['nmi_prev']:.4f}"
    line = (
        f"epoch {stats['epoch']} ({stats['method']}): {stats['clusters_used']} clusters found, "
        f"largest {100 * stats['largest_share']:.1f}% of {stats['n']} rows, NMI with epoch "
        f"{stats['epoch'] - 1}: {nmi}"
    )
    return "\n".join([line] + [f"WARNING: degenerate labels: {w}" for w in stats.get("warnings") or []])
