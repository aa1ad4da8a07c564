"""Eval-mode extraction over all tiles into an epoch's feature bank, preemptible and resumable.

Used for the bootstrap (epoch 0: the randomly initialised network) and for
``feature_source: extract`` (DeepCluster v1's pass after each epoch). Rank r embeds its
contiguous share of the tiles (``hpc.mpi.shard_range``), reading consecutive rows, so any number
of ranks works. All ranks step in lockstep — the same number of iterations, some empty at the
end — so they can agree on the preemption flag at every batch; rank 0 records the next
iteration in a progress file, and a resumed pass with the same world size and batch skips what is
done.
"""

from __future__ import annotations

import json
import logging
import math
import time

import torch

from dcssl.epochs.features import BankWriter, bank_dir
from dcssl.train.data import make_loader
from dcssl.train.trainer import Trainer, all_reduce_sum
from hpc.checkpoint import atomic_write_text
from hpc.distributed import barrier
from hpc.mpi import shard_range
from hpc.preemption import Preempted, PreemptionFlag

__all__ = ["extract_pass"]

log = logging.getLogger(__name__)
PROGRESS = ".extract-progress.json"


def _resume_point(path, world: int, batch: int) -> int:
    try:
        done = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return 0
    if (done.get("world_size"), done.get("batch")) != (world, batch):
        log.warning("extraction progress was made with another world size or batch; starting over")
        return 0
    return int(done["next"])


def extract_pass(trainer: Trainer, run_dir, epoch: int, bank_path, flag: PreemptionFlag) -> int:
    """Embed every tile into ``bank_path`` (prepared beforehand); returns the rows this rank
    wrote. Raises Preempted when told to stop."""
    cfg, env = trainer.cfg, trainer.env
    n, bs = len(trainer.dataset), cfg.extract_batch
    start, stop = shard_range(n, env.rank, env.world_size)
    iters = math.ceil(math.ceil(n / env.world_size) / bs)
    progress = bank_dir(run_dir, epoch) / PROGRESS
    first = _resume_point(progress, env.world_size, bs)
    plan = [
        list(range(min(stop, start + i * bs), min(stop, start + (i + 1) * bs))) for i in range(first, iters)
    ]
    loader = make_loader(
        trainer.dataset,
        batch_sampler=plan,
        workers=cfg.data.workers,
        prefetch_factor=cfg.data.prefetch_factor,
        pin_memory=cfg.data.pin_memory and trainer.device.type == "cuda",
    )
    writer = BankWriter(bank_path, n, cfg.model.proj_dim)
    t0, done_rows = time.monotonic(), 0
    try:
        for i, batch in zip(range(first, iters), loader):
            if len(batch["index"]):
                z = trainer.embed(batch)
                writer.write_rows(batch["index"].numpy(), z.to(torch.float16).cpu().numpy())
                done_rows += len(batch["index"])
            save = (i + 1) % cfg.checkpoint_every == 0
            if save:
                writer.sync()
            stop_now = all_reduce_sum(torch.tensor([float(flag.is_set())], device=trainer.device))
            if stop_now.item() > 0:
                writer.sync()
                barrier()  # every rank's rows up to batch i are on disk before progress says so
            if (save or stop_now.item() > 0) and env.is_main:
                atomic_write_text(
                    progress, json.dumps({"world_size": env.world_size, "batch": bs, "next": i + 1})
                )
            if stop_now.item() > 0:
                log.warning("extraction preempted after batch %d/%d", i + 1, iters)
                raise Preempted(f"extraction of epoch {epoch} preempted at batch {i + 1}")
            if env.is_main and (i + 1) % cfg.log_every == 0:
                rate = done_rows / max(time.monotonic() - t0, 1e-9)
                eta = (stop - start - done_rows) / max(rate, 1e-9)
                log.info(
                    "extract epoch %d: batch %d/%d, %.0f tiles/s per rank, ETA %.0f s",
                    epoch,
                    i + 1,
                    iters,
                    rate,
                    eta,
                )
    finally:
        writer.close()
    return done_rows
