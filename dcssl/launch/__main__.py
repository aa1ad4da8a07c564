"""Entry point: pick the subcommand module, parse its arguments, turn user mistakes into exit 2."""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import shlex
import sys

from dcssl.interrupt import RESUME_ENV
from dcssl.launch.common import UsageError
from hpc.checkpoint import DiskFull
from hpc.config import ConfigError

SUBCOMMANDS = {
    "tile": "tile slides (a folder, a glob or a GDC manifest) into the run's tile store",
    "ingest": "turn a folder of pre-tiled images (class sub-folders → labels) into a tile store",
    "train": "run the DeepCluster loop: bootstrap features → cluster → train → cluster → …",
    "cluster": "cluster one epoch's features (PCA-whitening + k-means or RCC)",
    "status": "show what is done, failed and pending, with the latest metrics",
    "plot": "redraw charts/progress.png from metrics.jsonl",
    "report": "write RUN/report/: run page, cluster atlas, cluster pages and slide maps (static HTML)",
    "exclude": "drop (or --undo) an epoch's artefact clusters from training, by tile",
    "demo": "tile the shipped slide and run a few DeepCluster epochs locally on the CPU",
    "eval": "k-NN and linear-probe accuracy of the encoder against random init",
    "export": "write the trunk as a torchvision-compatible state_dict",
    "embed": "write encoder features for every tile of a store",
    "curate": "pick a diverse subset of tiles per cluster",
    "config": "print every config key with its default and meaning",
    "verify": "check every file of a run against its recorded checksum; name the damaged ones",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not argparse's usage block
        raise UsageError(f"{self.prog}: {message}")


def _load(name: str):
    try:
        return importlib.import_module(f"dcssl.launch.{name}")
    except ModuleNotFoundError as err:
        if err.name == f"dcssl.launch.{name}":
            raise UsageError(f"subcommand {name!r} is not available in this version") from None
        raise


def _usage() -> str:
    lines = [
        "usage: python -m dcssl.launch <subcommand> [RUN_DIR] [options] [section.key=value …]",
        "",
        "subcommands:",
    ]
    lines += [f"  {name:<8} {text}" for name, text in SUBCOMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    # the jobs this command starts name it as what resumes them after a Ctrl-C (the outermost
    # command: the demo's, not its stages')
    outermost = RESUME_ENV not in os.environ
    os.environ.setdefault(RESUME_ENV, f"python -m dcssl.launch {shlex.join(argv)}")
    try:
        return _run(argv)
    finally:
        if outermost:
            os.environ.pop(RESUME_ENV, None)


def _run(argv: list[str]) -> int:
    name = argv[0]
    try:
        if name not in SUBCOMMANDS:
            raise UsageError(f"unknown subcommand {name!r}; choose one of {', '.join(SUBCOMMANDS)}")
        module = _load(name)
        parser = _Parser(prog=f"dcssl.launch {name}", description=SUBCOMMANDS[name])
        module.add_arguments(parser)
        args = parser.parse_intermixed_args(argv[1:])
        return int(module.run(args) or 0)
    except (UsageError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except DiskFull as err:  # the whole step is undone; after freeing space the same command goes on
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        print(f"error: {err.filename}: {err.strerror}; write somewhere you may", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # finished steps are kept; the same command resumes
        print(f"interrupted; resume with: {os.environ[RESUME_ENV]}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
