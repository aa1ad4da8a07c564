"""``python -m dcssl.bench gpu``: every CUDA path against the CPU path, and what the GPU delivers.

One prepared script for a GPU machine (a few minutes on one GPU). Each check runs in its own
try/except — one failing check reports its error and the others still run:

- ``augment``:  batch augmentation (single view and multi-crop) on the GPU vs the CPU, same
                uniforms: max / mean absolute difference of the normalised pixels.
- ``autocast``: ResNet-50 and ViT-S/16 embeddings under bf16 and fp16 autocast on the GPU vs fp32
                on the CPU (min cosine), and the weight gradient of one loss (cosine; fp16 with a
                loss scale).
- ``ddp``:      NCCL DistributedDataParallel over every visible GPU (one process each): the
                all-reduced gradient vs the full batch's gradient computed on the CPU.
- ``kmeans``:   ``cluster.backend=cuda`` vs numpy on the same start (identical labels expected),
                then seconds per Lloyd iteration at ``--rows`` × ``--dim``, k = ``--k`` vs faiss on
                the GPU (when this faiss has GPU support; else says so) and faiss on the CPU.
- ``train``:    training images/s of the real ``Trainer`` step (store loader, GPU augmentation,
                channels_last) for ResNet-50 bf16 / fp16, multi-crop and ViT-S/16, and the same
                step on one resident batch (the GPU's own rate, without the loader).

Without CUDA it exits 2 with one line. ``--cpu-self-test`` runs every check at toy sizes with the
"device" side on the CPU (gloo for NCCL, the torch k-means backend for cuda): it tests this
script, not a GPU. The last stdout line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dcssl.paths import RunPaths

__all__ = ["main"]

_QUICK = dict(tiles=32, batch=8, seconds=0.2, rows=4000, dim=16, k=32, size=32, archs=("resnet18",))


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dcssl.bench gpu", description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=15.0, help="timed seconds per training setting")
    p.add_argument("--tiles", type=int, default=4096, help="H&E tiles in the training store")
    p.add_argument("--size", type=int, default=224, help="tile and input size of the training settings")
    p.add_argument("--batch", type=int, default=256, help="training batch per GPU")
    p.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1), help="loader workers")
    p.add_argument("--rows", type=int, default=1_000_000, help="k-means rows (speed part)")
    p.add_argument("--dim", type=int, default=256, help="k-means dimension")
    p.add_argument("--k", type=int, default=10_000, help="k-means clusters")
    p.add_argument("--iters", type=int, default=5, help="Lloyd iterations timed")
    p.add_argument("--cpu-self-test", action="store_true", help="toy sizes, device side on the CPU")
    args = p.parse_args(argv)
    args.archs = ("resnet50", "vit_small_patch16_224")
    if args.cpu_self_test:
        args.workers = 0
        for name, value in _QUICK.items():
            setattr(args, name, value)
    return args


def _device(args) -> torch.device:
    return torch.device("cpu" if args.cpu_self_test else "cuda")


def _exact_fp32() -> None:
    """No TF32: the agreement checks compare against fp32 arithmetic."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def _tiles(n: int, size: int = 224) -> torch.Tensor:
    """uint8 n×3×size×size crops of the shipped H&E slide."""
    from dcssl.bench.loader import DEFAULT_SLIDE, bench_tiles
    from dcssl.train.data import decode_batch

    return decode_batch([np.frombuffer(t, np.uint8) for t in bench_tiles(DEFAULT_SLIDE, n, size)], size)


# ---------------------------------------------------------------------------------- augment
def check_augment(args) -> dict:
    from dcssl.train.augment import BatchAugment, MultiCrop, sample_seeds, uniforms, view_uniforms
    from dcssl.train.config import AugmentConfig

    dev, n = _device(args), 32
    images, seeds = _tiles(n), sample_seeds(0, 1, np.arange(n))
    cfg = AugmentConfig(color="both", global_crops=2, local_crops=4)
    u1, uv = torch.from_numpy(uniforms(seeds)), torch.from_numpy(view_uniforms(seeds, cfg.views))
    single = (BatchAugment(cfg)(images, u1), BatchAugment(cfg)(images.to(dev), u1.to(dev)).cpu())
    crop = MultiCrop(cfg)
    cpu_views, dev_views = crop(images, uv), crop(images.to(dev), uv.to(dev))
    diffs = [single[0] - single[1]] + [a - b.cpu() for a, b in zip(cpu_views, dev_views)]
    worst = max(float(d.abs().max()) for d in diffs)
    mean = max(float(d.abs().mean()) for d in diffs)
    # bilinear sampling rounds differently per device; a wrong crop or colour map is off by ≫ 0.1
    return {"ok": worst < 0.1 and mean < 2e-3, "max_abs_diff": worst, "mean_abs_diff": mean}


# ---------------------------------------------------------------------------------- autocast
def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(F.cosine_similarity(a.double(), b.double(), dim=-1).min())


def _embed_and_grad(net, x, target, dtype, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    net.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        logits, z = net(x)
    (F.cross_entropy(logits.float(), target) * scale).backward()
    grad = torch.cat([p.grad.flatten() for p in net.trunk.parameters() if p.grad is not None]) / scale
    return z.detach().float().cpu(), grad.float().cpu()


def check_autocast(args) -> dict:
    from dcssl.train.augment import eval_transform
    from dcssl.train.config import AugmentConfig, ModelConfig
    from dcssl.train.model import DeepClusterNet

    _exact_fp32()
    dev, out = _device(args), {"ok": True}
    x = eval_transform(_tiles(16), AugmentConfig())
    target = torch.arange(16) % 10
    for arch in args.archs:
        torch.manual_seed(0)
        net = DeepClusterNet(ModelConfig(arch=arch), k=10).eval()  # eval: BN running stats
        z_ref, g_ref = _embed_and_grad(net, x, target, None, 1.0)
        net = net.to(dev)
        for name, dtype, scale in (("bf16", torch.bfloat16, 1.0), ("fp16", torch.float16, 1024.0)):
            z, g = _embed_and_grad(net, x.to(dev), target.to(dev), dtype, scale)
            row = {"embedding_min_cosine": _cosine(z, z_ref), "grad_cosine": _cosine(g, g_ref)}
            row["ok"] = row["embedding_min_cosine"] > 0.99 and row["grad_cosine"] > 0.9
            out[f"{arch}_{name}"] = row
            out["ok"] &= row["ok"]
    return out


# ---------------------------------------------------------------------------------- DDP (NCCL)
def _ddp_batch(world: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(8 * world, 3, 64, 64, generator=g), torch.randint(0, 10, (8 * world,), generator=g)


def _ddp_net():
    from dcssl.train.config import ModelConfig
    from dcssl.train.model import DeepClusterNet

    torch.manual_seed(0)
    return DeepClusterNet(ModelConfig(arch="resnet18", proj_dim=64), k=10).eval()


def _flat_grad(net) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in net.parameters() if p.grad is not None])


def _ddp_rank(rank: int, world: int, init: str, out: str, backend: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    _exact_fp32()
    dist.init_process_group(backend, init_method=init, rank=rank, world_size=world)
    try:
        dev = torch.device(f"cuda:{rank}") if backend == "nccl" else torch.device("cpu")
        x, y = _ddp_batch(world)
        part = slice(rank * 8, (rank + 1) * 8)
        net = _ddp_net().to(dev)
        ddp = DistributedDataParallel(net, device_ids=[rank] if backend == "nccl" else None)
        F.cross_entropy(ddp(x[part].to(dev))[0], y[part].to(dev)).backward()
        ones = torch.ones(1, device=dev)
        dist.all_reduce(ones)
        if rank == 0:
            torch.save({"grad": _flat_grad(net).cpu(), "sum": float(ones)}, out)
    finally:
        dist.destroy_process_group()


def check_ddp(args) -> dict:
    import torch.multiprocessing as mp

    world = 2 if args.cpu_self_test else torch.cuda.device_count()
    backend = "gloo" if args.cpu_self_test else "nccl"
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rank0.pt")
        mp.spawn(_ddp_rank, args=(world, f"file://{tmp}/rendezvous", out, backend), nprocs=world)
        got = torch.load(out)
    x, y = _ddp_batch(world)
    net = _ddp_net()
    F.cross_entropy(net(x)[0], y).backward()  # mean over the full batch = mean of rank means
    ref = _flat_grad(net)
    rel = float((got["grad"] - ref).abs().max() / ref.abs().max())
    ok = rel < 1e-3 and got["sum"] == world
    return {"ok": ok, "backend": backend, "world_size": world, "grad_max_rel_diff": rel}


# ---------------------------------------------------------------------------------- k-means
def _faiss_seconds(x: np.ndarray, init: np.ndarray, iters: int, gpu: bool) -> float:
    import faiss

    km = faiss.Kmeans(
        x.shape[1],
        len(init),
        niter=iters,
        gpu=gpu,
        seed=1,
        max_points_per_centroid=len(x),
        min_points_per_centroid=1,
    )
    t0 = time.monotonic()
    km.train(x, init_centroids=init)
    return (time.monotonic() - t0) / iters


def check_kmeans(args) -> dict:
    from dcssl.bench.kmeans import _mixture
    from dcssl.cluster import kmeans
    from dcssl.cluster.kmeans import KMeansState

    backend = "torch" if args.cpu_self_test else "cuda"
    x = _mixture(min(args.rows, 100_000), min(args.dim, 64), min(args.k, 256), seed=0)
    init = x[: min(args.k, 256)].copy()
    runs = {
        b: kmeans(x, len(init), iterations=5, tol=0.0, backend=b, state=KMeansState(init.copy()), log_every=0)
        for b in ("numpy", backend)
    }
    same = float(np.mean(runs["numpy"][1] == runs[backend][1]))
    out = {"backend": backend, "labels_identical_fraction": same, "ok": same == 1.0}
    x = _mixture(args.rows, args.dim, args.k, seed=1)
    init = x[: args.k].copy()
    t0 = time.monotonic()
    _, _, stats = kmeans(
        x,
        args.k,
        iterations=args.iters,
        tol=0.0,
        backend=backend,
        state=KMeansState(init.copy()),
        log_every=0,
    )
    out["ours_s_per_iter"] = (time.monotonic() - t0) / args.iters
    out["shape"] = f"{args.rows}x{args.dim}, k={args.k}"
    try:
        import faiss
    except ImportError:
        out["faiss_gpu_s_per_iter"], out["faiss_gpu"] = None, "not available: faiss is not installed"
        return out
    if hasattr(faiss, "StandardGpuResources") and not args.cpu_self_test:
        out["faiss_gpu_s_per_iter"] = _faiss_seconds(x, init, args.iters, gpu=True)
        out["speedup_vs_faiss_gpu"] = out["faiss_gpu_s_per_iter"] / out["ours_s_per_iter"]
    else:
        out["faiss_gpu_s_per_iter"] = None
        out["faiss_gpu"] = "not available: this faiss has no GPU support (faiss-cpu); conda faiss-gpu has"
    out["faiss_cpu_s_per_iter"] = _faiss_seconds(x, init, max(1, args.iters // 2), gpu=False)
    return out


# ---------------------------------------------------------------------------------- training
def _train_setting(root: Path, args, arch: str, precision: str, multicrop: bool) -> dict:
    from dcssl.train.config import AugmentConfig, DataConfig, ModelConfig, TrainConfig
    from dcssl.train.trainer import Trainer
    from hpc.env import DistEnv

    # SwAV's 96/224 local views, never under 17 px (the ResNet's last stage needs a ≥ 2×2 input)
    local = max(args.size * 3 // 7, 17)
    views = dict(global_crops=2, local_crops=6, local_size=local) if multicrop else {}
    cfg = TrainConfig(
        model=ModelConfig(arch=arch),
        data=DataConfig(batch_size=args.batch, workers=args.workers, samples_per_epoch=args.batch * 2000),
        augment=AugmentConfig(size=args.size, device="gpu", **views),
        precision=precision,
    )
    dev = _device(args)
    trainer = Trainer(root, cfg, DistEnv(), dev, k=1000)
    trainer.start_epoch(1, (np.arange(len(trainer.dataset)) % 1000).astype(np.int32), 1000)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def rate(batches) -> tuple[float, float]:
        done, start, loss = 0, None, float("nan")
        for i, batch in enumerate(batches):
            loss = float(trainer.train_step(batch).loss)  # the segment reads the loss every step
            if i == 2:
                sync()
                start = time.perf_counter()
            elif start is not None:
                done += args.batch
                if time.perf_counter() - start >= args.seconds:
                    break
        sync()
        return done / (time.perf_counter() - start), loss

    with_loader, loss = rate(trainer.batches())
    resident = next(iter(trainer.batches(1)))
    resident = {k: v.to(dev) if k != "index" else v for k, v in resident.items()}
    on_gpu, _ = rate(resident for _ in range(10**9))
    row = {"images_per_s": with_loader, "images_per_s_resident_batch": on_gpu, "loss": loss}
    row["ok"] = bool(np.isfinite(loss))
    if trainer.scaler.is_enabled():
        row["fp16_loss_scale"] = trainer.scaler.get_scale()
    return row


def check_train(args) -> dict:
    from dcssl.bench.loader import DEFAULT_SLIDE, bench_tiles, write_store

    out = {"ok": True, "batch": args.batch, "workers": args.workers, "size": args.size}
    with tempfile.TemporaryDirectory() as tmp:
        write_store(
            RunPaths(Path(tmp)).store, bench_tiles(DEFAULT_SLIDE, args.tiles, args.size), args.size, shards=8
        )
        arch, vit = args.archs[0], args.archs[-1]
        settings = [(arch, "bf16", False), (arch, "fp16", False), (arch, "bf16", True), (vit, "bf16", False)]
        for arch, precision, multicrop in settings:
            name = f"{arch}_{precision}" + ("_multicrop_2+6_views" if multicrop else "")
            try:
                out[name] = _train_setting(Path(tmp), args, arch, precision, multicrop)
            except Exception as err:  # one setting failing leaves the others measured
                out[name] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
            out["ok"] &= out[name]["ok"]
    return out


CHECKS = {
    "augment": check_augment,
    "autocast": check_autocast,
    "ddp": check_ddp,
    "kmeans": check_kmeans,
    "train": check_train,
}


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if not args.cpu_self_test and not torch.cuda.is_available():
        print(
            "error: no CUDA device is visible (torch.cuda.is_available() is False); run "
            "`python -m dcssl.bench gpu` on a GPU node (e.g. srun --gpus=1 ...)",
            file=sys.stderr,
        )
        return 2
    dev = _device(args)
    result: dict = {
        "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu (self-test)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    started = time.monotonic()
    for name, check in CHECKS.items():
        t0 = time.monotonic()
        try:
            result[name] = check(args)
        except Exception as err:  # report and go on: every other check still runs
            result[name] = {"ok": False, "error": f"{type(err).__name__}: {err}"}
            traceback.print_exc()
        result[name]["seconds"] = round(time.monotonic() - t0, 1)
        print(f"{name}: {json.dumps(result[name])}", file=sys.stderr, flush=True)
    result["ok"] = all(result[name]["ok"] for name in CHECKS)
    result["seconds"] = round(time.monotonic() - started, 1)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
