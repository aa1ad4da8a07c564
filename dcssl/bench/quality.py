"""``python -m dcssl.bench quality --npz bloodmnist.npz | --tiles crc-he-dev``: does DeepCluster help?

The whole recipe through the real pipeline, in one process: the train split (an .npz's, or an image
folder's ``train/`` with class sub-folders) is ingested as a run's store → ``launch train`` (the
local executor: torchrun train segments, mpiexec clustering) → the k-NN / linear probe of
``launch eval`` against the same architecture at random init, plus k-NN on raw pixels. Queries are
the test split (``test/`` of a folder). ``--peers simclr,byol,swav`` also trains each peer through
lightly (``dcssl.bench.peers``: same trunk, input size, augmentations, threads) twice, each run a
whole cosine schedule: one spanning exactly the images DeepCluster saw (deterministic given the
seed), one spanning the images its own rate buys in DeepCluster's CPU time, and scores them with
the same probes: one JSON line at equal images seen, a second at equal CPU minutes (CPU = user +
system time of every process involved; that line gives each peer's CPU actually used beside
DeepCluster's, and the images per CPU second that sized it).
``--seeds 0,1`` runs the whole race once per seed and ends with each setting's mean and spread
(``dcssl.bench.quality_seeds``).

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

from dcssl.bench.peers import PEERS, cpu_seconds, race_peer
from dcssl.bench.quality_seeds import parse_seeds, seed_overrides, seed_run_dir, summarise
from dcssl.evaluate.encoder import LoadedEncoder, random_encoder, trained_encoder
from dcssl.evaluate.labelled import LabelledSet, StoreSource, ingest_npz, load_labelled
from dcssl.evaluate.run import _headline, evaluate_encoders, format_table
from dcssl.launch.common import UsageError
from dcssl.launch.train import resolve, run_loop
from dcssl.paths import RunPaths
from hpc.checkpoint import atomic_write_text
from hpc.config import ConfigError

log = logging.getLogger("dcssl.bench.quality")

# Both recipes: in-process loading, SGD with a cosine schedule, an exact extraction pass per epoch,
# two cores per train and cluster task (the peers then get two threads too).
_SHARED = [
    "train.data.workers=0",
    "train.optim.lr=0.05",
    "train.optim.schedule=cosine",
    "train.feature_source=extract",
    "train.log_every=20",
    "cluster.iterations=20",
    "executor_train.cpus_per_task=2",
    "executor_cluster.cpus_per_task=2",
]

# A thin ResNet-18 at 32 px (BloodMNIST is 28 px) with the small stem (3×3 stride 1, no max-pool:
# torchvision's stem leaves a 1×1 final map at 32 px, and pretraining then barely beats random
# init), width 16 (the small stem costs ~16× the FLOPs per tile; 7 epochs take ~6 CPU-minutes
# with bf16 autocast on a CPU with native bf16, ~10 in fp32), k = 100 (≈ 12 × the 8 classes:
# 50 and 300 did worse), exact feature extraction each epoch, mild colour jitter: stain colour
# separates some cell types (eosinophils). Weight decay 5e-4 (the peers' own): 3 epochs, k-NN
# 0.786 / 0.750 on seeds 0 / 1 against 0.766 / 0.762 at 1e-4 (a tie on the mean, 0.768 vs
# 0.764); DeepCluster-v2's frozen centroid head and MLP projection, which help on H&E, cost 4
# points here (0.743), and k = 300 / 500 with 5e-4 gave 0.767 / 0.742.
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
    "cluster.k=100",
    "cluster.pca_dim=64",
    "train.optim.weight_decay=0.0005",
] + _SHARED

# An H&E image folder (crc-he-dev: 224-px tiles) at ``--size`` px: the ImageNet stem (at 64 px
# the last stage is 2×2), width 32, the default H&E colour jitter, and DeepCluster-v2's
# classifier: each epoch's head is the clusters' centroids, kept frozen, after a 512-wide MLP
# projection (64 px, 3 epochs, seed 0: k-NN 0.572 vs 0.524 with v1's random head and linear
# projection). k = 200 (40 × the 5 classes) with weight decay 5e-4: mean k-NN over seeds 0-2
# 0.587 (0.538 … 0.620) against 0.517 at k = 50 and 1e-4 (README, "the peer race at 64 px").
TILES_RECIPE = [
    "train.model.arch=resnet18",
    "train.model.width=32",
    "train.model.proj_dim=128",
    "train.model.proj_hidden=512",
    "train.model.head_init=centroids",
    "train.optim.head_frozen=1.0",
    "train.augment.scale_min=0.25",
    "train.augment.color=both",
    "train.data.batch_size=64",
    "cluster.k=200",
    "cluster.pca_dim=32",
    "train.optim.weight_decay=0.0005",
] + _SHARED


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dcssl.bench quality", description=__doc__)
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--npz", type=Path, help="MedMNIST-style .npz")
    data.add_argument("--tiles", type=Path, help="image folder with train/ and test/ class sub-folders")
    parser.add_argument("--size", type=int, default=224, help="--tiles: tile and input size in px")
    parser.add_argument("--epochs", type=int, default=7, help="DeepCluster epochs (loop.epochs)")
    parser.add_argument("--peers", default="", help=f"comma-separated peers to train: {','.join(PEERS)}")
    parser.add_argument(
        "--run",
        type=Path,
        default=None,
        help="run directory (default: a fresh temporary one; an existing run "
        "resumes, and its DeepCluster minutes add up over invocations: a finished "
        "run re-run with --peers races them against its whole pretraining)",
    )
    parser.add_argument(
        "--seeds",
        default="",
        help="comma-separated seeds, e.g. 0,1: the whole race once per seed (train.seed and "
        "cluster.seed set to it, run directories <run>/seed-N), then a line per setting with "
        "each figure's mean and (min, max) over the seeds",
    )
    parser.add_argument(
        "overrides",
        nargs="*",
        default=[],
        metavar="section.key=value",
        help="recipe overrides, e.g. cluster.k=200 train.model.width=64",
    )
    args = parser.parse_args(argv)
    args.peers = [p for p in args.peers.split(",") if p]
    unknown = sorted(set(args.peers) - set(PEERS))
    if unknown:
        raise UsageError(f"--peers {','.join(unknown)}: unknown; choose from {','.join(PEERS)}")
    try:
        args.seeds = parse_seeds(args.seeds)
    except ValueError as err:
        raise UsageError(str(err)) from None
    args.recipe = RECIPE if args.npz else TILES_RECIPE + [f"train.augment.size={args.size}"]
    return args


def _pretrain(run_dir: Path, args) -> tuple[float, float]:
    """The DeepCluster loop exactly as `python -m dcssl.launch train` runs it; (wall, CPU) minutes."""
    schedule = [f"train.optim.epochs={max(args.epochs, 1)}"]  # the cosine spans exactly the run
    loop_overrides = [o for o in args.recipe + schedule + args.overrides if not o.startswith("eval.")]
    ns = argparse.Namespace(
        run_dir=run_dir,
        config=None,
        overrides=loop_overrides,
        executor="local",
        epochs=args.epochs,
        wait=True,
    )
    started, cpu = time.time(), cpu_seconds() + cpu_seconds(children=True)
    paths, cfg = resolve(ns)
    if run_loop(paths, cfg, wait=True) != 0:
        raise SystemExit(f"error: the DeepCluster loop failed; see {RunPaths(run_dir).logs}")
    spent = cpu_seconds() + cpu_seconds(children=True) - cpu
    return _add_pretrain_minutes(run_dir, (time.time() - started) / 60, spent / 60)


def _add_pretrain_minutes(run_dir: Path, wall: float, cpu: float) -> tuple[float, float]:
    """DeepCluster's (wall, CPU) minutes over every invocation on this run, kept in the run's
    ``bench-quality.json``: re-running a finished run with ``--peers`` races the peers against
    the whole pretraining, not against the seconds the finished loop took to say so."""
    record = run_dir / "bench-quality.json"
    before = json.loads(record.read_text()) if record.is_file() else {"wall_minutes": 0.0, "cpu_minutes": 0.0}
    total = {"wall_minutes": before["wall_minutes"] + wall, "cpu_minutes": before["cpu_minutes"] + cpu}
    atomic_write_text(record, json.dumps(total))
    return total["wall_minutes"], total["cpu_minutes"]


def _labelled(args, run_dir: Path) -> LabelledSet:
    """The probe's reference (train split) and queries (test split)."""
    if args.npz:
        return load_labelled(args.npz)
    from dcssl.store import Store
    from dcssl.tile.config import TileConfig
    from dcssl.tile.ingest import ingest_folder

    ingest_folder(
        args.tiles / "test", run_dir / "eval-test", TileConfig(tile_size=args.size), "folders", "test"
    )
    ref, query = Store(RunPaths(run_dir).store), Store(run_dir / "eval-test")
    return LabelledSet(
        StoreSource(ref), ref.labels(), StoreSource(query), query.labels(), f"{args.tiles}: train/ → test/"
    )


def _ingest(args, run_dir: Path) -> int:
    if args.npz:
        return len(ingest_npz(args.npz, RunPaths(run_dir).store, splits=("train",)))
    from dcssl.tile.config import TileConfig
    from dcssl.tile.ingest import ingest_folder

    train = args.tiles / "train"
    return ingest_folder(train, RunPaths(run_dir).store, TileConfig(tile_size=args.size), "folders", "train")[
        "written"
    ]


def _images_seen(run_dir: Path, batch_size: int) -> int:
    """Tiles DeepCluster trained on (one process): its epochs' steps × batch (epoch 0 only embeds)."""
    from dcssl.jsonl import read_jsonl

    records = read_jsonl(RunPaths(run_dir).metrics)
    steps = {r["epoch"]: r["steps"] for r in records if r.get("kind") == "train_epoch" and r["epoch"] > 0}
    return int(sum(steps.values()) * batch_size)


def _peers(args, run_dir: Path, train_cfg, images: int, cpu_minutes: float) -> tuple[dict, dict]:
    """Each peer's equal-images run and equal-CPU run (``race_peer``) → (encoders, facts per peer)."""
    import torch

    torch.set_num_threads(2)  # the train segment's executor_train.cpus_per_task in both recipes
    encoders, facts = {}, {}
    for method in args.peers:
        log.info("peer %s: to %d images, then to %.2f CPU minutes", method, images, cpu_minutes)
        result = race_peer(method, RunPaths(run_dir).store, train_cfg, images, cpu_minutes * 60)
        for at, net in result.snapshots.items():
            encoders[f"{method}@{at}"] = LoadedEncoder(net, result.images_at[at], None, None)
        facts[method] = {
            "images_at": result.images_at,
            "cpu_minutes_at": {k: round(v / 60, 2) for k, v in result.cpu_seconds_at.items()},
            "images_per_cpu_second": round(result.images_per_cpu_second, 1),
            "final_loss": result.losses[-1],
        }
        log.info("peer %s: %s", method, facts[method])
    return encoders, facts


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except (ConfigError, UsageError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _check_inputs(args) -> str | None:
    if args.npz and not args.npz.is_file():
        return f"{args.npz}: not found; pass the BloodMNIST .npz (MedMNIST v2)"
    if args.tiles and not ((args.tiles / "train").is_dir() and (args.tiles / "test").is_dir()):
        return f"{args.tiles}: needs train/ and test/ folders of class sub-folders (e.g. crc-he-dev)"
    return None


def _main(argv: list[str] | None) -> int:
    args = _parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    problem = _check_inputs(args)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    run_dir = args.run or Path(tempfile.mkdtemp(prefix="dcssl-quality-"))
    run_dir.mkdir(parents=True, exist_ok=True)
    if not args.seeds:
        for line in _race(args, run_dir):
            print(json.dumps(line))
        return 0
    per_seed = []
    for seed in args.seeds:
        seeded = argparse.Namespace(**{**vars(args), "overrides": args.overrides + seed_overrides(seed)})
        lines = [{**line, "seed": seed} for line in _race(seeded, seed_run_dir(run_dir, seed))]
        for line in lines:
            print(json.dumps(line))
        per_seed.append(lines)
    for setting in zip(*per_seed):  # the summaries last: one per setting
        print(json.dumps({"summary": True, **summarise(list(setting))}))
    return 0


def _race(args, run_dir: Path) -> list[dict]:
    """One whole race in ``run_dir``: the table on stdout, the two settings' lines returned."""
    run_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    log.info("store: %d train tiles in %s", _ingest(args, run_dir), RunPaths(run_dir).store)
    pretrain_minutes, pretrain_cpu = _pretrain(run_dir, args)

    from dcssl.config import load_run_config

    train_cfg = load_run_config(run_dir).train
    eval_cfg = load_run_config(overrides=args.overrides).eval
    data = _labelled(args, run_dir)
    images = _images_seen(run_dir, train_cfg.data.batch_size)
    peer_encoders, peer_facts = _peers(args, run_dir, train_cfg, images, pretrain_cpu)
    encoders = {"pretrained": trained_encoder(run_dir, train_cfg), "random": random_encoder(train_cfg)}
    rows = evaluate_encoders(data, {**encoders, **peer_encoders}, eval_cfg, train_cfg)
    result = _headline(rows)
    minutes = (time.time() - started) / 60
    print(f"\nquality check: {data.description}")
    for line in format_table(rows):
        print(line)
    gain = result["knn_pretrained"] - result["knn_random"]
    print(
        f"k-NN: pretrained {result['knn_pretrained']:.4f} vs random init {result['knn_random']:.4f} "
        f"({gain * 100:+.1f} points) vs raw pixels {result['knn_raw_pixels']:.4f}; DeepCluster "
        f"{pretrain_minutes:.1f} min wall, {pretrain_cpu:.1f} CPU-min ({args.epochs} epochs, {images} images)"
    )
    common = {
        "knn_pretrained": result["knn_pretrained"],
        "knn_random": result["knn_random"],
        "knn_raw_pixels": result["knn_raw_pixels"],
        "linear_pretrained": result["linear_pretrained"],
        "linear_random": result["linear_random"],
        "knn_gain_points": round(gain * 100, 2),
        "label_fractions": {f"{r['encoder']}@{r['fraction']:g}": [r["knn"], r.get("linear")] for r in rows},
        "epochs": args.epochs,
        "size": train_cfg.augment.size,
        "images_seen": images,
        "pretrain_minutes": round(pretrain_minutes, 2),
        "cpu_minutes": {"deepcluster": round(pretrain_cpu, 2)},
        "minutes": round(minutes, 2),
        "run_dir": str(run_dir),
        "overrides": args.recipe + args.overrides,
    }
    settings = (("images", "equal_images_seen"), ("cpu", "equal_cpu_minutes"))
    return [
        {"setting": setting, **common, **_versus_peers(result, peer_facts, at)} for at, setting in settings
    ]


def _versus_peers(result: dict, facts: dict, at: str) -> dict:
    if not facts:
        return {}
    knn = {m: result[f"knn_{m}@{at}"] for m in facts}
    best = max(knn, key=knn.get)
    return {
        "peers_knn": knn,
        "peers_linear": {m: result[f"linear_{m}@{at}"] for m in facts},
        "peers_cpu_minutes": {m: facts[m]["cpu_minutes_at"][at] for m in facts},
        "peers_images_seen": {m: facts[m]["images_at"][at] for m in facts},
        "best_peer": best,
        "knn_vs_best_peer": round(result["knn_pretrained"] / max(knn[best], 1e-9), 4),
        **(_cpu_sizing(facts) if at == "cpu" else {}),
    }


def _cpu_sizing(facts: dict) -> dict:
    """The equal-CPU line's extra: each peer's images per CPU second over its equal-images run,
    which sized its image budget (its CPU actually used is ``peers_cpu_minutes``; the budget is
    ``cpu_minutes.deepcluster``)."""
    return {"peers_images_per_cpu_second": {m: facts[m]["images_per_cpu_second"] for m in facts}}


if __name__ == "__main__":
    sys.exit(main())
