"""Arguments shared by the subcommands: the run directory, a YAML config, key=value overrides."""

from __future__ import annotations

import argparse
from pathlib import Path


class UsageError(Exception):
    """A mistake in how the command was called: one line, exit status 2, nothing written."""


def add_run_arguments(parser: argparse.ArgumentParser, must_exist: bool = False) -> None:
    """``RUN_DIR [--config YAML] [section.key=value …]``."""
    parser.add_argument("run_dir", type=Path, help="the run directory (all outputs go here)")
    parser.add_argument("--config", type=Path, default=None, help="YAML config (sections by stage)")
    parser.add_argument(
        "overrides",
        nargs="*",
        default=[],
        metavar="section.key=value",
        help="override config values, e.g. train.lr=0.05 cluster.k=100",
    )
    parser.set_defaults(run_dir_must_exist=must_exist)


def existing_run_dir(path: Path) -> Path:
    """The run directory, or a one-line UsageError naming it and what to do."""
    if not path.is_dir():
        raise UsageError(
            f"{path}: run directory not found; create it with "
            f"`python -m dcssl.launch tile {path} --slides …` (or demo)"
        )
    return path
