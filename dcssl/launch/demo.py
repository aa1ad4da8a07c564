"""``launch demo [--out DIR]``: the README's first command, end to end on this machine's CPU.

Tiles the shipped real slide (CMU-1, Aperio svs), runs a few DeepCluster epochs with the local
executor (a torchvision ResNet-18 on 64 px crops, so it takes minutes), exports the encoder, and prints where
the chart, the metrics and the encoder are. Every setting is an ordinary override, so
``demo loop.epochs=5 cluster.k=16`` works, and re-running resumes like any run.
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path

DEMO_OVERRIDES = [
    "tile.tile_size=96",  # ≈240 tissue tiles from the small slide instead of ≈45 at 224 px
    "train.model.arch=resnet18",
    "train.model.proj_dim=64",  # torchvision resnet18, exportable
    "train.augment.size=64",
    "train.data.batch_size=32",
    "train.data.workers=0",
    "cluster.k=8",
    "cluster.pca_dim=32",
    "loop.epochs=3",
]


def demo_slide() -> Path:
    return Path(str(resources.files("dcssl") / "data" / "cmu-1-small-region.svs"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("runs/demo"),
        help="run directory to create or resume (default: runs/demo)",
    )
    parser.add_argument(
        "--slides", default=None, help="slides to use instead of the shipped one (folder, glob or manifest)"
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        default=[],
        metavar="section.key=value",
        help="override any setting, e.g. loop.epochs=5",
    )


def run(args: argparse.Namespace) -> int:
    from dcssl.launch.__main__ import main as launch

    out, overrides = str(args.out), [*DEMO_OVERRIDES, *args.overrides]
    stages = [
        ["tile", out, "--slides", str(args.slides or demo_slide()), "--executor", "local", *overrides],
        ["train", out, "--executor", "local", *overrides],
        ["export", out],
        ["report", out],  # also redrawn after every clustering; here for a resumed, finished demo
    ]
    for argv in stages:
        code = launch(argv)
        if code != 0:
            return code
    print(
        f"\ndemo finished: {out}\n"
        f"  report   {args.out / 'report' / 'index.html'}   (open it in a browser)\n"
        f"  chart    {args.out / 'charts' / 'progress.png'}\n"
        f"  metrics  {args.out / 'metrics.jsonl'}\n"
        f"  encoder  {args.out / 'export'}\n"
        f"  status   python -m dcssl.launch status {out}"
    )
    return 0
