"""``python -m dcssl.bench quality --npz bloodmnist.npz``: does DeepCluster pretraining help?

The whole recipe through the real pipeline, in one process: the .npz train split is ingested as a
run's store → ``launch train`` (the local executor: torchrun train segments, mpiexec clustering)
→ ``launch eval`` against the same architecture at random init, plus k-NN on raw pixels. Queries
are the test split. The baselines are measured in the same process on the same splits.

Every recipe setting is a ``section.key=value`` override (``RECIPE`` below); extra overrides on
the command line win. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from dcssl.evaluate.labelled import ingest_npz
from dcssl.evaluate.run import evaluate, format_table
from dcssl.launch.common import UsageError
from dcssl.launch.train import resolve, run_loop
from hpc.config import ConfigError

log = logging.getLogger("dcssl.bench.quality")

# A thin ResNet-18 at 32 px (BloodMNIST is 28 px) with the small stem (3×3 stride 1, no max-pool:
# torchvision's stem leaves a 1×1 final map at 32 px, and pretraining then barely beats random
# init), width 16 (the small stem costs ~16× the FLOPs per tile; 7 epochs take ~6 CPU-minutes
# with bf16 autocast on a CPU with native bf16, ~10 in fp32), k = 100 (≈ 12 × the 8 classes:
# 50 and 300 did worse), exact feature extraction each epoch, mild colour jitter: stain colour
# separates some cell types (eosinophils).
RECIPE = [
    "train.model.arch=resnet18",
    "train.model.stem=small",
    "train.model.width=16",
    "train.model.proj_dim=128",
    "train.augment.size=32",
    "train.augment.scale_min=0.35",
    "train.augment.hue=0.02",
    "train.augment.saturation=0.2",
    "train.augment.brightness=0.3",
    "train.augment.contrast=0.3",
    "train.augment.grayscale_p=0.1",
    "train.data.batch_size=128",
    "train.data.workers=0",
    "train.optim.lr=0.05",
    "train.optim.weight_decay=0.0001",
    "train.optim.schedule=cosine",
    "train.feature_source=extract",
    "train.log_every=20",
    "cluster.k=100",
    "cluster.pca_dim=64",
    "cluster.iterations=20",
    "executor_train.cpus_per_task=2",
    "executor_cluster.cpus_per_task=2",
]


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dcssl.bench quality", description=__doc__)
    parser.add_argument("--npz", type=Path, required=True, help="MedMNIST-style .npz")
    parser.add_argument("--epochs", type=int, default=7, help="DeepCluster epochs (loop.epochs)")
    parser.add_argument(
        "--run",
        type=Path,
        default=None,
        help="run directory (default: a fresh temporary one; an existing run "
        "resumes, and its minutes then count only this invocation)",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        default=[],
        metavar="section.key=value",
        help="recipe overrides, e.g. cluster.k=200 train.model.width=64",
    )
    return parser.parse_args(argv)


def _pretrain(run_dir: Path, epochs: int, overrides: list[str]) -> float:
    """The DeepCluster loop exactly as `python -m dcssl.launch train` runs it; minutes."""
    schedule = [f"train.optim.epochs={max(epochs, 1)}"]  # the cosine spans exactly the run
    loop_overrides = [o for o in RECIPE + schedule + overrides if not o.startswith("eval.")]
    args = argparse.Namespace(
        run_dir=run_dir, config=None, overrides=loop_overrides, executor="local", epochs=epochs, wait=True
    )
    started = time.time()
    paths, cfg = resolve(args)
    if run_loop(paths, cfg, wait=True) != 0:
        raise SystemExit(f"error: the DeepCluster loop failed; see {run_dir / 'logs'}")
    return (time.time() - started) / 60


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except (ConfigError, UsageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _main(argv: list[str] | None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.npz.is_file():
        print(f"error: {args.npz}: not found; pass the BloodMNIST .npz (MedMNIST v2)", file=sys.stderr)
        return 2
    run_dir = args.run or Path(tempfile.mkdtemp(prefix="dcssl-quality-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    store = ingest_npz(args.npz, run_dir / "store", splits=("train",))
    log.info("store: %d train tiles in %s", len(store), store.root)
    pretrain_minutes = _pretrain(run_dir, args.epochs, args.overrides)

    from dcssl.config import load_run_config

    train_cfg = load_run_config(run_dir).train
    eval_cfg = load_run_config(overrides=args.overrides).eval
    result = evaluate(run_dir, args.npz, eval_cfg, train_cfg)
    minutes = (time.time() - started) / 60
    print(f"\nBloodMNIST-style quality check: {result['split']}")
    for line in format_table(result["rows"]):
        print(line)
    gain = result["knn_pretrained"] - result["knn_random"]
    print(
        f"k-NN: pretrained {result['knn_pretrained']:.4f} vs random init "
        f"{result['knn_random']:.4f} ({gain * 100:+.1f} points, ratio "
        f"{result['knn_pretrained'] / max(result['knn_random'], 1e-9):.3f}) vs raw pixels "
        f"{result['knn_raw_pixels']:.4f}"
    )
    print(
        f"DeepCluster pretraining: {pretrain_minutes:.1f} min ({args.epochs} epochs); "
        f"whole recipe {minutes:.1f} min; run {run_dir}"
    )
    print(
        json.dumps(
            {
                "knn_pretrained": result["knn_pretrained"],
                "knn_random": result["knn_random"],
                "knn_raw_pixels": result["knn_raw_pixels"],
                "linear_pretrained": result["linear_pretrained"],
                "linear_random": result["linear_random"],
                "knn_gain_points": round(gain * 100, 2),
                "epochs": args.epochs,
                "pretrain_minutes": round(pretrain_minutes, 2),
                "minutes": round(minutes, 2),
                "run_dir": str(run_dir),
                "overrides": RECIPE + args.overrides,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
