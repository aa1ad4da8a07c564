"""``python -m dcssl.train RUN_DIR --epoch E [--config FILE] [train.key=value ...]``

Runs one training segment as one rank of whatever launched it: srun tasks, submitit tasks,
torchrun, or a single process. Prints the epoch summary as one JSON line (rank 0).
This is the stage's one entry point: slurm/train.sbatch, the local executor and submitit jobs all
run it. Rank 0 holds the run lock (RUN_DIR/run.lock) while the segment runs.
Exit codes: 0 done (or checkpointed at the step budget / preempted: run again to continue),
1 a failure such as a non-finite loss, 2 a configuration or input mistake, or the run is in use.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from contextlib import ExitStack
from pathlib import Path

from dcssl.config import ConfigError
from dcssl.runlock import RunInUse, hold_stage
from hpc.checkpoint import report_disk_full
from hpc.distributed import shutdown_distributed
from hpc.env import detect_env


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dcssl.train", description=__doc__.splitlines()[0])
    p.add_argument("run_dir", help="run directory holding store/, labels/, config.yaml")
    p.add_argument("--epoch", type=int, required=True, help="segment to run (0 = bootstrap)")
    p.add_argument("--config", default=None, help="YAML file applied over RUN_DIR/config.yaml")
    p.add_argument("overrides", nargs="*", help="train.key=value overrides")
    return p


def _setup_logging() -> None:
    rank = os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or "0"
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format=f"%(asctime)s rank{rank} %(levelname)s %(name)s: %(message)s",
    )


def _hold_or_refusal(held: ExitStack, args: argparse.Namespace, is_main: bool, timeout_s: float) -> str:
    """Rank 0 takes the run lock for the job (into ``held``); every rank learns whether it was
    refused ("" if not): the ranks join their process group first and hear it from rank 0."""
    refusal = ""
    if is_main:
        try:
            held.enter_context(hold_stage(args.run_dir, f"train-{args.epoch:04d}"))
        except RunInUse as err:
            refusal = str(err)
    env = detect_env()
    if env.world_size > 1:
        import torch.distributed as dist

        from hpc.distributed import init_distributed

        init_distributed(env, timeout_s=timeout_s)
        message = [refusal]
        dist.broadcast_object_list(message, src=0)
        refusal = message[0]
    return refusal


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_intermixed_args(argv)
    _setup_logging()
    from dcssl.fits import check_fits, store_tiles
    from dcssl.paths import RunPaths
    from dcssl.pipeline.steps import Step
    from dcssl.settings import load_step_config
    from dcssl.train.segment import NonFiniteLoss, SegmentError, run_segment

    is_main = detect_env().is_main  # one rank holds the run lock for the whole job

    try:
        bad = [o for o in args.overrides if not o.startswith("train.")]
        if bad:
            raise ConfigError(f"{bad[0]}: this stage takes train.key=value overrides only")
        if args.epoch < 0:
            raise ConfigError(f"--epoch {args.epoch}: must be ≥ 0")
        store = RunPaths(Path(args.run_dir)).store
        cfg = load_step_config(args.run_dir, Step("train", args.epoch).name, args.config, args.overrides)
        if (store / "manifest.json").is_file():  # else run_segment says what is missing
            check_fits(cfg, store_tiles(store), f"the store {store}", "train")
        with ExitStack() as held:
            refusal = _hold_or_refusal(held, args, is_main, cfg.train.dist_timeout_s)
            if refusal:  # every rank stops now, not at the distributed timeout
                shutdown_distributed()
                if is_main:
                    print(f"error: {refusal}", file=sys.stderr)
                return 2
            summary = run_segment(args.run_dir, args.epoch, cfg.train)
    except (ConfigError, SegmentError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLoss as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        return report_disk_full(err, Path(args.run_dir))
    if is_main:
        print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    from dcssl.interrupt import run_interruptible

    sys.exit(run_interruptible(main, "dcssl.train"))
