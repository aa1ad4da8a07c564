"""``launch export RUN [--out FILE]``: the trunk as a torchvision ResNet state_dict + a JSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from dcssl.evaluate.encoder import NoCheckpoint
from dcssl.evaluate.export import default_export_path, export_encoder
from dcssl.launch.common import (
    UsageError,
    add_run_arguments,
    hold_if_writing_into,
    load_configs,
    print_json_line,
    writable_folder,
)
from dcssl.paths import RunPaths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="state_dict file (default RUN/export/encoder.pt; the JSON goes beside it)",
    )


def run(args: argparse.Namespace) -> int:
    run_dir, run_cfg = load_configs(args, "train")
    out = writable_folder(args.out or default_export_path(run_dir), "--out")
    try:
        with hold_if_writing_into(RunPaths(run_dir), out, "launch export"):
            document = export_encoder(run_dir, run_cfg.train, out)
    except NoCheckpoint as err:
        raise UsageError(str(err)) from None
    print(
        f"exported {document['arch']} (width {document['width']}, checkpoint step "
        f"{document['checkpoint_step']}, epoch {document['epoch']}) to {out}"
    )
    print(f"load it with: {document['load']}")
    print_json_line(
        {
            "state_dict": str(out),
            "info": str(out.with_suffix(".json")),
            **{
                k: document[k]
                for k in (
                    "arch",
                    "width",
                    "feature_dim",
                    "torchvision_compatible",
                    "checkpoint_step",
                    "epoch",
                    "k",
                )
            },
        }
    )
    return 0
