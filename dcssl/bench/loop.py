"""``python -m dcssl.bench loop``: where a DeepCluster epoch's time goes, demo-sized.

Runs the demo's loop (the shipped slide, the demo settings) twice in this process: this project
(features recorded while training, DeepCluster-v2 style) and the DeepCluster v1 baseline (an
eval-mode extraction pass over every tile after each epoch, ``train.feature_source=extract``).
Per epoch it splits the time into train, extract, cluster and relabel, and prints the share spent
outside training — DeepCluster v1 spent a third of its time there; the target is < 10 %.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = {"dcssl": "train", "deepcluster-v1": "extract"}


def _tile(root: Path, slide: Path, overrides: list[str]) -> Path:
    from dcssl.launch.__main__ import main as launch

    tiles = root / "tiles"
    if launch(["tile", str(tiles), "--slides", str(slide), "--executor", "local", *overrides]):
        raise SystemExit("tiling the bench slide failed")
    return tiles


def _run_variant(tiles: Path, run: Path, overrides: list[str], epochs: int) -> list[dict]:
    from dcssl.cluster.job import run_cluster
    from dcssl.config import load_run_config, save_run_config
    from dcssl.train.segment import run_segment

    shutil.copytree(tiles, run)
    cfg = load_run_config(run, None, overrides)
    save_run_config(run, cfg)
    rows = []
    for epoch in range(epochs + 1):
        started = time.perf_counter()
        summary = run_segment(run, epoch, cfg.train, requeue=False)
        trained = time.perf_counter()
        run_cluster(run, epoch, cfg.cluster)
        clustered = time.perf_counter()
        if epoch == 0:
            continue  # the bootstrap pass is paid once per run, not per epoch
        relabel, extract = summary.get("relabel_s") or 0.0, summary.get("extract_s") or 0.0
        rows.append(
            {
                "train_s": trained - started - relabel - extract,
                "extract_s": extract,
                "relabel_s": relabel,
                "cluster_s": clustered - trained,
            }
        )
    return rows


def _mean(rows: list[dict]) -> dict:
    out = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
    total = sum(out.values())
    out["outside_training_fraction"] = (out["extract_s"] + out["cluster_s"] + out["relabel_s"]) / total
    return out


def main(argv: list[str] | None = None) -> int:
    from dcssl.launch.demo import DEMO_OVERRIDES, demo_slide

    parser = argparse.ArgumentParser(prog="python -m dcssl.bench loop")
    parser.add_argument("--epochs", type=int, default=3, help="epochs after the bootstrap pass")
    parser.add_argument("--slide", type=Path, default=None, help="default: the shipped demo slide")
    parser.add_argument("overrides", nargs="*", default=[], help="extra section.key=value")
    args = parser.parse_args(argv)
    overrides = [*DEMO_OVERRIDES, *args.overrides]
    with tempfile.TemporaryDirectory(prefix="dcssl-bench-loop-") as tmp:
        root = Path(tmp)
        tiles = _tile(root, args.slide or demo_slide(), overrides)
        results = {
            name: _mean(
                _run_variant(tiles, root / name, [*overrides, f"train.feature_source={src}"], args.epochs)
            )
            for name, src in VARIANTS.items()
        }
    print(f"seconds per epoch (mean of {args.epochs}, demo-sized: {' '.join(args.overrides)})")
    print(f"{'':16}{'train':>8}{'extract':>9}{'cluster':>9}{'relabel':>9}{'outside train':>15}")
    for name, r in results.items():
        print(
            f"{name:16}{r['train_s']:8.2f}{r['extract_s']:9.2f}{r['cluster_s']:9.2f}"
            f"{r['relabel_s']:9.3f}{100 * r['outside_training_fraction']:14.1f}%"
        )
    ours, v1 = results["dcssl"], results["deepcluster-v1"]
    print(
        f"cluster + relabel = {100 * ours['outside_training_fraction']:.1f} % of an epoch "
        f"(target < 10 %); the v1 baseline spends {100 * v1['outside_training_fraction']:.1f} %"
    )
    print(
        json.dumps(
            {
                "bench": "loop",
                "epochs": args.epochs,
                "train_s": round(ours["train_s"], 3),
                "cluster_s": round(ours["cluster_s"], 3),
                "relabel_s": round(ours["relabel_s"], 4),
                "cluster_fraction": round(ours["outside_training_fraction"], 4),
                "v1_extract_s": round(v1["extract_s"], 3),
                "v1_cluster_s": round(v1["cluster_s"], 3),
                "v1_cluster_fraction": round(v1["outside_training_fraction"], 4),
                "meets_target": ours["outside_training_fraction"] < 0.10,
            }
        )
    )
    return 0
