"""``launch plot RUN_DIR``: summarise any clustered epoch not yet in metrics.jsonl (runs driven by
plain sbatch scripts) and redraw charts/progress.png."""

from __future__ import annotations

import argparse
from pathlib import Path

from dcssl.launch.common import UsageError, existing_run_dir
from dcssl.paths import RunPaths
from dcssl.pipeline.report import publish_missing


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="the run directory")


def run(args: argparse.Namespace) -> int:
    paths = RunPaths(existing_run_dir(args.run_dir))
    chart = publish_missing(paths)
    if chart is None:
        raise UsageError(f"{paths.metrics}: no metrics yet; run `launch train` first")
    print(chart)
    return 0
