"""One training segment: one epoch (or a step budget) of one job, as the current rank.

Epoch 0 is the bootstrap: the seed's randomly initialised network is checkpointed (step 0) and
embeds every tile in eval mode. Epoch e ≥ 1 trains on the labels the cluster job wrote for epoch
e-1 and records features[e] while it trains (or extracts them after, ``feature_source:
extract``). Phases, kept in the checkpoint so any interruption resumes in the right place::

    train ──(epoch's steps done)──▶ extract (only feature_source=extract) ──▶ done

Preemption: the flag (USR2) is agreed by all ranks at each step boundary; rank 0 checkpoints,
then the job requeues and the next run continues at the same sample. A finished segment writes
``RUN_DIR/train/epoch-NNNN.done.json``; running it again returns that summary and does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

from dcssl.epochs.trained import done_path, read_done
from dcssl.paths import RunPaths
from dcssl.train.config import TrainConfig
from dcssl.train.epoch_labels import load_labels
from dcssl.train.resume import checkpoint_manager, resume_point
from dcssl.train.segment_errors import NonFiniteLoss, SegmentError
from dcssl.train.segment_run import SegmentRun
from hpc.distributed import init_distributed
from hpc.preemption import Preempted, PreemptionFlag, requeue_and_exit

__all__ = [
    "run_segment",
    "SegmentError",
    "NonFiniteLoss",
    "load_labels",
    "done_path",
    "checkpoint_manager",
    "resume_point",
]

log = logging.getLogger(__name__)


def run_segment(
    run_dir: str | Path,
    epoch: int,
    cfg: TrainConfig,
    *,
    flag: PreemptionFlag | None = None,
    on_step: Callable[[int], None] | None = None,
    requeue: bool = True,
) -> dict:
    """Run training segment ``epoch`` as the current rank and return the epoch summary.

    On preemption it checkpoints and, with ``requeue``, requeues the SLURM job and exits
    (outside SLURM: exits; re-run to resume); without ``requeue`` it raises ``Preempted``.
    When a step budget (``max_steps``) ends the job before the epoch does, it returns a summary
    with ``complete: False`` — or, under SLURM with ``requeue``, requeues the job to go on.
    ``on_step(global_step)`` is called after every step (progress hooks, tests).
    """
    run_dir = Path(run_dir)
    if epoch < 0:
        raise SegmentError(f"epoch must be ≥ 0, got {epoch}")
    summary = read_done(run_dir, epoch)
    if summary is not None:
        log.info("train segment %d already done (%s): nothing to do", epoch, done_path(run_dir, epoch))
        return summary
    flag = flag or PreemptionFlag().install()  # before any worker forks, so they inherit it
    if not RunPaths(run_dir).manifest.is_file():
        raise SegmentError(f"{RunPaths(run_dir).store}: no tile store; run the tile stage first")
    env, device = init_distributed(timeout_s=cfg.dist_timeout_s)
    log.info(
        "segment %d: rank %d of %d (local %d, node %d of %d: %s) via %s on %s",
        epoch,
        env.rank,
        env.world_size,
        env.local_rank,
        env.node_rank + 1,
        max(len(env.nodes), 1),
        os.environ.get("SLURMD_NODENAME") or socket.gethostname(),
        env.source,
        device,
    )
    try:
        summary = SegmentRun(run_dir, epoch, cfg, env, device, flag, on_step).run()
    except Preempted:
        if requeue:
            requeue_and_exit(is_main=env.is_main)
        raise
    if not summary["complete"] and requeue and os.environ.get("SLURM_JOB_ID"):
        # a step budget under SLURM: the same job comes back for the rest of the epoch
        requeue_and_exit(is_main=env.is_main)
    return summary
