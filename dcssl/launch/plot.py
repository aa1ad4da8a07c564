"""``launch plot RUN_DIR``: redraw charts/progress.png from metrics.jsonl."""

from __future__ import annotations

import argparse
from pathlib import Path

from dcssl.jsonl import read_jsonl
from dcssl.launch.common import UsageError, existing_run_dir
from dcssl.paths import RunPaths
from dcssl.pipeline.report import draw_progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="the run directory")


def run(args: argparse.Namespace) -> int:
    paths = RunPaths(existing_run_dir(args.run_dir))
    chart = draw_progress(paths, read_jsonl(paths.metrics))
    if chart is None:
        raise UsageError(f"{paths.metrics}: no metrics yet; run `launch train` first")
    print(chart)
    return 0
