"""``launch eval RUN --data LABELLED``: k-NN and linear probe, trained encoder against random init.

LABELLED is an ingested labelled store (a store folder or a run directory) or a MedMNIST-style
``.npz``. Prints a table, writes RUN/eval/eval.json, and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from pathlib import Path

from dcssl.evaluate.encoder import NoCheckpoint
from dcssl.evaluate.labelled import LabelledDataError
from dcssl.evaluate.run import eval_path, evaluate, format_table
from dcssl.launch.common import (
    UsageError,
    add_run_arguments,
    hold_if_writing_into,
    load_configs,
    print_json_line,
)
from dcssl.paths import RunPaths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument(
        "--data",
        type=Path,
        required=True,
        help="labelled set: an ingested store folder or a MedMNIST-style .npz",
    )
    parser.add_argument(
        "--fractions", default=None, help="label fractions, comma-separated (default 0.01,0.1,1)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="result JSON (default RUN/eval/eval.json; the run is only read)",
    )


def _fractions(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"--fractions {text!r}: give numbers in (0, 1], e.g. 0.01,0.1,1") from None


def _reading_notes(result: dict) -> list[str]:
    """Chance level always; the small-set caveat and the k ≥ references note when they apply."""
    notes = [f"chance (the queries' most common class): {result['chance']:.3f}"]
    if result["knn_k"] >= result["n_reference"]:
        notes.append(
            f"k-NN: k = {result['knn_k']} ≥ {result['n_reference']} references, so every reference "
            f"votes (weighted by similarity); with features that are all alike this is close to a "
            f"plain class count"
        )
    if result["caveat"]:
        notes.append(result["caveat"])
    return notes


def run(args: argparse.Namespace) -> int:
    run_dir, run_cfg = load_configs(args, "eval")
    cfg, train_cfg = run_cfg.eval, run_cfg.train
    if args.fractions is not None:
        try:
            cfg = replace(cfg, fractions=_fractions(args.fractions))
        except ValueError as err:
            raise UsageError(f"--fractions: {err}") from None
    out = args.out or eval_path(run_dir)
    if args.out is None and not os.access(run_dir, os.W_OK):
        raise UsageError(f"{run_dir}: not writable for you; write the result elsewhere with --out FILE.json")
    try:
        with hold_if_writing_into(RunPaths(run_dir), out, "launch eval"):
            result = evaluate(run_dir, args.data, cfg, train_cfg, out)
    except (LabelledDataError, NoCheckpoint) as err:
        raise UsageError(str(err)) from None
    print(
        f"\n{result['split']}; {result['n_classes']} classes; checkpoint step "
        f"{result['checkpoint_step']} (epoch {result['checkpoint_epoch']}); {result['layer']} "
        f"features at {result['size']} px; k-NN k={result['knn_k']}"
    )
    for line in format_table(result["rows"]):
        print(line)
    for line in _reading_notes(result):
        print(line)
    print(f"eval: {out}")
    print_json_line({k: v for k, v in result.items() if k != "rows"})
    return 0
