"""Helpers shared by the launcher subcommands eval, export, embed and curate."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TypeVar

from dcssl.config import load_section
from dcssl.launch.common import UsageError, existing_run_dir
from dcssl.train.config import TrainConfig

T = TypeVar("T")


def check_overrides(overrides: list[str], sections: tuple[str, ...]) -> None:
    """Reject overrides this subcommand would silently ignore (a typo must not pass unseen)."""
    for item in overrides:
        key = item.split("=", 1)[0]
        if "=" not in item or key.split(".", 1)[0] not in sections or "." not in key:
            raise UsageError(
                f"{item!r}: this subcommand takes overrides of "
                f"{', '.join(s + '.KEY=VALUE' for s in sections)}"
            )


def load_configs(args: argparse.Namespace, cls: type[T], section: str) -> tuple[Path, TrainConfig, T]:
    """(run dir, the run's train section, this stage's section), overrides applied."""
    run_dir = existing_run_dir(args.run_dir)
    check_overrides(args.overrides, ("train", section))
    train = load_section(TrainConfig, "train", run_dir, args.config, args.overrides)
    own = load_section(cls, section, run_dir, args.config, args.overrides)
    return run_dir, train, own


def print_json_line(document: dict) -> None:
    """The last stdout line: one JSON object for machines."""
    print(json.dumps(document), flush=True)
