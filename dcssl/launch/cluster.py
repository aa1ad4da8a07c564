"""``launch cluster RUN_DIR --epoch E``: cluster one epoch's features on its own (e.g. to try
another k or RCC on a finished run), with the same executors as the loop."""

from __future__ import annotations

import argparse
import json
import shutil
from dataclasses import replace

from dcssl.config import load_run_config, save_run_config
from dcssl.launch.common import (
    UsageError,
    add_run_arguments,
    existing_run_dir,
    hold_run_or_refuse,
    refuse_live_chain,
)
from dcssl.paths import RunPaths
from dcssl.pipeline.local import StepFailed, run_local
from dcssl.pipeline.slurm import submit_chain, wait_chain
from dcssl.pipeline.state import RunState
from dcssl.pipeline.steps import Step


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument("--epoch", type=int, required=True, help="whose features to cluster")
    parser.add_argument(
        "--executor", choices=["local", "slurm"], default=None, help="override executor_cluster.kind"
    )
    parser.add_argument(
        "--redo", action="store_true", help="delete this epoch's labels first and cluster again"
    )


def run(args: argparse.Namespace) -> int:
    paths = RunPaths(existing_run_dir(args.run_dir))
    if not paths.features_complete(args.epoch):
        raise UsageError(
            f"{paths.features(args.epoch)}: no complete features for epoch "
            f"{args.epoch}; run `launch train` first"
        )
    cfg = load_run_config(paths.root, args.config, args.overrides)
    executor = replace(cfg.executor_cluster, kind=args.executor or cfg.executor_cluster.kind)
    step = Step("cluster", args.epoch)
    with hold_run_or_refuse(paths, "launch cluster") as lock:
        state = RunState(paths)
        refuse_live_chain(paths, [step], state)
        save_run_config(paths.root, cfg)  # the job reads the run's config: overrides are kept
        if args.redo:
            shutil.rmtree(paths.labels(args.epoch), ignore_errors=True)
        if executor.kind == "local":
            try:
                run_local([step], paths, {"cluster": executor}, state, lock)
            except StepFailed as err:
                print(f"error: {err}")
                return 1
        else:
            submit_chain([step], paths, {"cluster": executor}, state, lock)
    if executor.kind != "local" and not wait_chain([step], paths, RunState(paths)):
        return 1
    print(result_line(json.loads((paths.labels(args.epoch) / "stats.json").read_text())))
    return 0


def result_line(stats: dict) -> str:
    """One line a person reads: clusters found, the largest one's share, NMI, any warnings."""
    nmi = "n/a" if stats.get("nmi_prev") is None else f"{stats['nmi_prev']:.4f}"
    line = (
        f"epoch {stats['epoch']} ({stats['method']}): {stats['clusters_used']} clusters found, "
        f"largest {100 * stats['largest_share']:.1f}% of {stats['n']} rows, NMI with epoch "
        f"{stats['epoch'] - 1}: {nmi}"
    )
    return "\n".join([line] + [f"WARNING: degenerate labels: {w}" for w in stats.get("warnings") or []])
