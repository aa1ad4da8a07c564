"""``launch report RUN [--epoch E]``: write RUN/report/ (static HTML; open report/index.html)."""

from __future__ import annotations

import argparse
from pathlib import Path

from dcssl.config import load_run_config
from dcssl.launch.common import UsageError, check_overrides, check_run_files, existing_run_dir
from dcssl.paths import RunPaths
from dcssl.report.build import ReportError, build_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="the run directory")
    parser.add_argument("--epoch", type=int, default=None, help="epoch of the atlas (default: the newest)")
    parser.add_argument(
        "overrides", nargs="*", default=[], metavar="report.KEY=VALUE", help="e.g. report.cards_per_page=100"
    )


def run(args: argparse.Namespace) -> int:
    run_dir = existing_run_dir(args.run_dir)
    if not RunPaths(run_dir).manifest.is_file():
        raise UsageError(f"{RunPaths(run_dir).store}: no tile store; tile the slides first")
    if args.epoch is not None and args.epoch < 0:
        raise UsageError(f"--epoch {args.epoch}: give a clustered epoch ≥ 0")
    check_overrides(args.overrides, ("report",))  # a typo must not pass unseen
    check_run_files(run_dir)
    cfg = load_run_config(run_dir, None, args.overrides).report
    try:
        print(build_report(run_dir, args.epoch, cfg))
    except ReportError as err:
        raise UsageError(str(err)) from None
    return 0
