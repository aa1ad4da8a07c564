"""``launch plot RUN_DIR [--out PNG]``: summarise any clustered epoch not yet in metrics.jsonl (runs
driven by plain sbatch scripts) and redraw charts/progress.png — or, with ``--out`` (a run one
cannot write), draw the recorded metrics into that file and touch nothing in the run."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from dcssl.jsonl import read_jsonl
from dcssl.launch.common import UsageError, check_run_files, existing_run_dir, hold_run_or_refuse
from dcssl.paths import RunPaths
from dcssl.pipeline.report import draw_progress, publish_missing


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="the run directory")
    parser.add_argument("--out", type=Path, default=None, help="draw into this PNG; the run is only read")


def run(args: argparse.Namespace) -> int:
    paths = RunPaths(existing_run_dir(args.run_dir))
    check_run_files(paths.root)
    if args.out is None and not os.access(paths.root, os.W_OK):
        raise UsageError(f"{paths.root}: not writable for you; draw the chart elsewhere with --out FILE.png")
    if args.out is not None:
        chart = draw_progress(paths, read_jsonl(paths.metrics), target=args.out)
    else:
        with hold_run_or_refuse(paths, "launch plot"):
            chart = publish_missing(paths)
    if chart is None:
        raise UsageError(f"{paths.metrics}: no metrics yet; run `launch train` first")
    print(chart)
    return 0
