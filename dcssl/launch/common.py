"""Arguments shared by the subcommands: the run directory, a YAML config, key=value overrides."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from dcssl.paths import RunPaths
from dcssl.runlock import RunInUse, hold_run
from hpc.lock import FileLock


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


def _finishing(paths: RunPaths):
    """A holder that is a job whose step is already done is only writing its summary: wait."""
    from dcssl.pipeline.steps import Step, is_done

    def finishing(holder: dict) -> bool:
        step = Step.from_name(str(holder.get("step", "")))
        return step is not None and is_done(paths, step)

    return finishing


@contextmanager
def hold_run_or_refuse(paths: RunPaths, what: str) -> Iterator[FileLock | None]:
    """This launcher's hold on the run for the block; a run in use is a UsageError (exit 2)."""
    try:
        with hold_run(paths, what, finishing=_finishing(paths)) as lock:
            yield lock
    except RunInUse as err:
        raise UsageError(str(err)) from None


def refuse_live_chain(paths: RunPaths, pending, state) -> None:
    """A SLURM chain of this run still queued or running: refuse (it holds no lock between jobs)."""
    from dcssl.pipeline.slurm import chain_in_use

    holder = chain_in_use(pending, state)
    if holder:
        raise UsageError(
            f"{paths.root}: run in use by {holder}; wait for the chain to finish "
            f"(`python -m dcssl.launch status {paths.root}`) or scancel it"
        )
