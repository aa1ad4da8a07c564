"""What the subcommands share: the run directory, a YAML config, key=value overrides, the request."""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from dcssl.config import RunConfig, load_run_config
from dcssl.fits import store_tiles
from dcssl.jsonl import read_jsonl
from dcssl.launch.request import load_request
from dcssl.paths import RunPaths
from dcssl.pipeline.state import RunState
from dcssl.runlock import RunInUse, hold_run
from dcssl.slides.sources import load_slide_list
from hpc.lock import FileLock

log = logging.getLogger("dcssl.launch")

OVERRIDE_EXAMPLES = "train.optim.lr=0.05 cluster.k=100"
"""Shown in every subcommand's --help (a test runs each through the config loader)."""


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
        help=f"override config values, e.g. {OVERRIDE_EXAMPLES}",
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


@contextmanager
def hold_if_writing_into(paths: RunPaths, out: Path, what: str) -> Iterator[FileLock | None]:
    """A command that writes into RUN holds the run lock exclusively (a writer like any other);
    one that writes only elsewhere (``--out``) just reads finished, sealed files: no lock, so it
    works on a run one cannot write (and while the run trains)."""
    inside = Path(out).resolve().is_relative_to(paths.root.resolve())
    with hold_run_or_refuse(paths, what) if inside else nullcontext() as lock:
        yield lock


def refuse_live_chain(paths: RunPaths, pending, state) -> None:
    """A SLURM chain of this run still queued or running: refuse (it holds no lock between jobs)."""
    from dcssl.pipeline.slurm import chain_in_use

    holder = chain_in_use(pending, state)
    if holder:
        raise UsageError(
            f"{paths.root}: run in use by {holder}; wait for the chain to finish "
            f"(`python -m dcssl.launch status {paths.root}`) or scancel it"
        )


def check_run_files(run_dir: Path) -> None:
    """Read every record the run keeps (config, state, metrics, ledger, slide list, manifest),
    so a damaged one is one line naming it, before any work, on every subcommand."""
    paths = RunPaths(Path(run_dir))
    load_run_config(paths.root)
    RunState(paths)
    read_jsonl(paths.metrics)
    read_jsonl(paths.store / "ledger.jsonl")
    if paths.slide_list.exists():
        load_slide_list(paths.slide_list)
    if paths.manifest.exists():
        store_tiles(paths.store)


def writable_folder(path: Path, flag: str) -> Path:
    """``path``'s folder exists (or can be made) and is writable; else one line naming it."""
    folder = Path(path).parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{existing}: not a writable folder; pass {flag} somewhere you can write")
    return Path(path)


def check_overrides(overrides: list[str], sections: tuple[str, ...]) -> None:
    """Reject overrides this subcommand would silently ignore (a typo must not pass unseen)."""
    for item in overrides:
        key = item.split("=", 1)[0]
        if "=" not in item or key.split(".", 1)[0] not in sections or "." not in key:
            raise UsageError(
                f"{item!r}: this subcommand takes overrides of "
                f"{', '.join(s + '.KEY=VALUE' for s in dict.fromkeys(sections))}"
            )


def request(args: argparse.Namespace, extra: list[str] = ()) -> RunConfig:
    """The whole config for this command, validated and checked against the run's finished work;
    accepted changes are announced."""
    check_run_files(Path(args.run_dir))
    cfg, notes = load_request(Path(args.run_dir), args.config, [*args.overrides, *extra])
    for note in notes:
        log.info("setting changed: %s", note)
    return cfg


def load_configs(args: argparse.Namespace, section: str):
    """(run dir, the whole config) for eval/export/embed/curate: only ``train`` and ``section``
    overrides are taken (others would be ignored here)."""
    run_dir = existing_run_dir(args.run_dir)
    check_overrides(args.overrides, ("train", section))
    return run_dir, request(args)


def print_json_line(document: dict) -> None:
    """The last stdout line: one JSON object for machines."""
    print(json.dumps(document), flush=True)
