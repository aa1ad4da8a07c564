"""``python -m dcssl.bench train``: training images/s (per GPU where one exists), side by side.

Both sides train the same torchvision ResNet with a k-class head by SGD on the same real H&E
tiles (random crops of a shipped slide), batch for batch, with the same number of loader workers:

- dcssl:    the train segment's step — the store dataset, batch augmentations (on the GPU when
            there is one), bf16 autocast + channels_last (on GPUs and on CPUs with native bf16),
            the L2-normalised projection, and the feature-bank row writes;
- baseline: what a first script looks like — torchvision ImageFolder over the tiles as .jpg files,
            per-image torchvision transforms in the loader, a plain fp32 training loop.

Each side warms up for a few steps, then trains for at least ``--seconds``; the figure is images/s
of wall time (on a shared CPU machine, read the ratio). The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dcssl.bench.loader import DEFAULT_SLIDE, bench_tiles, write_image_folder, write_store
from dcssl.paths import RunPaths

__all__ = ["main"]


def _timed(step, batches, warmup: int, seconds: float, batch: int) -> float:
    """Images/s of ``step(batch)`` over ``batches`` after ``warmup`` steps."""
    done, start = 0, None
    for i, b in enumerate(batches):
        step(b)
        if i + 1 == warmup:
            start = time.perf_counter()
        elif start is not None:
            done += batch
            if time.perf_counter() - start >= seconds:
                break
    return done / (time.perf_counter() - start)


def _cycle(make_iter):
    while True:
        yield from make_iter()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _ours(run_dir: Path, args, device: torch.device) -> float:
    from dcssl.epochs.features import BankWriter, prepare_bank
    from dcssl.train.config import AugmentConfig, DataConfig, ModelConfig, TrainConfig
    from dcssl.train.trainer import Trainer
    from hpc.env import DistEnv

    cfg = TrainConfig(
        model=ModelConfig(arch=args.arch),
        data=DataConfig(batch_size=args.batch, workers=args.workers),
        augment=AugmentConfig(size=args.size),
    )
    trainer = Trainer(run_dir, cfg, DistEnv(), device, k=args.k)
    n = len(trainer.dataset)
    labels = (np.arange(n) % args.k).astype(np.int32)
    trainer.start_epoch(1, labels, args.k)
    writer = BankWriter(prepare_bank(run_dir, 1, n, cfg.model.proj_dim, None), n, cfg.model.proj_dim)

    def step(batch: dict) -> None:
        out = trainer.train_step(batch)
        owned = out.owner.to(out.embeddings.device)
        writer.write_rows(out.index[out.owner].numpy(), out.embeddings[owned].to(torch.float16).cpu().numpy())
        out.loss.item()  # the segment reads the loss every step (NaN check, preemption flag)

    def batches():
        trainer.position = 0  # another pass over the epoch
        return trainer.batches()

    rate = _timed(step, _cycle(batches), args.warmup, args.seconds, args.batch)
    writer.close()
    return rate


def _baseline(folder: Path, args, device: torch.device) -> float:
    import torchvision
    import torchvision.transforms as T
    from torch.utils.data import DataLoader

    transform = T.Compose(
        [
            T.RandomResizedCrop(args.size, scale=(0.2, 1.0)),
            T.RandomHorizontalFlip(),
            T.RandomVerticalFlip(),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.05)], p=0.8),
            T.RandomGrayscale(0.2),
            T.ToTensor(),
            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    data = torchvision.datasets.ImageFolder(str(folder), transform=transform)
    loader = DataLoader(
        data,
        batch_size=args.batch,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        pin_memory=device.type == "cuda",
    )
    torch.manual_seed(0)
    model = getattr(torchvision.models, args.arch)(num_classes=args.k).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-5)

    def step(batch) -> None:
        images, _ = batch
        target = torch.randint(0, args.k, (len(images),))
        loss = torch.nn.functional.cross_entropy(model(images.to(device)), target.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss.item()

    model.train()
    return _timed(step, _cycle(lambda: iter(loader)), args.warmup, args.seconds, args.batch)


def main(argv: list[str] | None = None) -> int:
    cuda = torch.cuda.is_available()
    p = argparse.ArgumentParser(prog="python -m dcssl.bench train", description=__doc__.splitlines()[0])
    p.add_argument("--slide", type=Path, default=DEFAULT_SLIDE, help="slide to cut tiles from")
    p.add_argument("--tiles", type=int, default=1024, help="distinct tiles")
    p.add_argument("--arch", default="resnet50" if cuda else "resnet18", choices=["resnet18", "resnet50"])
    p.add_argument("--size", type=int, default=224 if cuda else 112, help="input side in px")
    p.add_argument("--batch", type=int, default=256 if cuda else 32, help="images per step")
    p.add_argument(
        "--workers",
        type=int,
        default=min(8, os.cpu_count() or 1) if cuda else 0,
        help="loader worker processes (both sides)",
    )
    p.add_argument("--k", type=int, default=100, help="pseudo-classes of the head")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--seconds", type=float, default=10.0, help="timed training per side")
    args = p.parse_args(argv)
    device = torch.device("cuda") if cuda else torch.device("cpu")
    if not cuda:
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    where = torch.cuda.get_device_name() if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"{args.arch} at {args.size} px, batch {args.batch}, {args.workers} loader workers, "
        f"{args.tiles} tiles, on {where}",
        flush=True,
    )
    tiles = bench_tiles(args.slide, args.tiles, 224)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        run_dir = Path(tmp) / "run"
        write_store(RunPaths(run_dir).store, tiles, 224, shards=16)
        write_image_folder(Path(tmp) / "folder", tiles)
        ours = _ours(run_dir, args, device)
        print(f"dcssl segment step   {ours:8.1f} images/s", flush=True)
        base = _baseline(Path(tmp) / "folder", args, device)
        print(f"plain PyTorch loop   {base:8.1f} images/s", flush=True)
    print(f"dcssl = {ours / base:.2f} × the plain loop ({'per GPU' if cuda else 'CPU'})")
    print(
        json.dumps(
            {
                "bench": "train",
                "arch": args.arch,
                "size": args.size,
                "batch": args.batch,
                "workers": args.workers,
                "device": "cuda" if cuda else "cpu",
                "images_per_s": round(ours, 2),
                "baseline_images_per_s": round(base, 2),
                "ratio_vs_baseline": round(ours / base, 3),
                "load_average": round(os.getloadavg()[0], 2),
            }
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
