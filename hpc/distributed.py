"""torch.distributed from the detected environment: gloo on CPU, nccl on GPU, device = local rank."""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from hpc.env import DistEnv, detect_env

__all__ = ["init_distributed", "shutdown_distributed", "barrier", "device_for"]


def device_for(env: DistEnv) -> torch.device:
    """The device this rank should use: cuda:<local_rank mod visible GPUs>, else the CPU."""
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return torch.device("cuda", env.local_rank % torch.cuda.device_count())
    return torch.device("cpu")


def init_distributed(
    env: DistEnv | None = None,
    backend: str | None = None,
    timeout_s: float = 600.0,
) -> tuple[DistEnv, torch.device]:
    """Join the job's process group (when world size > 1) and pick this rank's device.

    Safe to call twice; a single process gets no process group, so the same training code runs
    with and without a launcher.
    """
    env = env or detect_env()
    device = device_for(env)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if env.world_size > 1 and not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", env.master_addr)
        os.environ.setdefault("MASTER_PORT", str(env.master_port))
        dist.init_process_group(
            backend=backend or ("nccl" if device.type == "cuda" else "gloo"),
            init_method=f"tcp://{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
            rank=env.rank,
            world_size=env.world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
    return env, device


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
