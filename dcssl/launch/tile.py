"""``launch tile RUN_DIR --slides FOLDER|GLOB|MANIFEST.tsv``: tile every slide not yet tiled.

One array element per pending slide, at most ``executor_tile.array_parallelism`` at once
(``sbatch --array=…%N`` on SLURM, the same throttle locally). Re-running skips complete shards and
redoes missing, failed or partial ones. Exit status: 0 all slides tiled (or, on SLURM without
--wait, the array submitted), 1 some slides failed (see ``launch status``), 2 a usage mistake.
"""

from __future__ import annotations

import argparse
import logging
import os
from contextlib import ExitStack
from pathlib import Path

from dcssl.config import save_run_config
from dcssl.launch.common import UsageError, add_run_arguments, hold_run_or_refuse, request
from dcssl.paths import RunPaths
from dcssl.runlock import children_under, record_jobs, record_pids
from dcssl.slides.sources import SourceError
from dcssl.tile.prepare import prepare_run
from dcssl.tile.run import FinalizeTask, finalize, pending_indices, summarize, tile_element
from hpc.lock import FileLock
from hpc.submit import make_executor, submit_array

log = logging.getLogger("dcssl.launch.tile")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_arguments(parser)
    parser.add_argument(
        "--slides",
        default=None,
        metavar="FOLDER|GLOB|MANIFEST.tsv",
        help="slides to tile: a folder, a quoted glob, or a GDC manifest "
        "(default: the run's existing slide list)",
    )
    parser.add_argument(
        "--executor", choices=["local", "slurm"], default=None, help="override executor_tile.kind"
    )
    parser.add_argument(
        "--wait", action="store_true", help="slurm: wait for the array and report (local always waits)"
    )


class TileTask:
    """The function each array element runs (picklable: submitit ships it to the job)."""

    def __init__(self, run_dir: Path, config: Path | None, overrides: list[str]):
        self.run_dir = str(Path(run_dir).resolve())
        self.config = str(Path(config).resolve()) if config is not None else None
        self.overrides = list(overrides)

    def __call__(self, index: int) -> dict:
        return tile_element(self.run_dir, index, self.config, self.overrides)


def _collect(jobs, indices: list[int]) -> list[str]:
    """Elements that ended without a result (killed, out of memory): one line each."""
    dead = []
    for job, index in zip(jobs, indices):
        try:
            job.result()
        except Exception as err:  # submitit re-raises whatever ended the job
            dead.append(
                f"element {index} (job {job.job_id}) ended without a result "
                f"({type(err).__name__}); see {job.paths.stderr}"
            )
    return dead


def _report(paths: RunPaths) -> int:
    summary = summarize(paths.root)
    print(
        f"slides: {summary.slides}  done: {summary.done}  failed: {len(summary.failed)}  "
        f"pending: {summary.pending}  tiles: {summary.tiles}"
    )
    for item in summary.failed:
        print(f"  failed  {item['slide']}  [{item['stage']}] {item['reason']}")
    if paths.manifest.is_file():
        print(f"store: {paths.manifest}")
    return 1 if summary.failed or summary.pending else 0


def check_external_masks(folder: str) -> None:
    """A mask folder that is not there is a typo, not 11 k failed slides: refuse it up front.
    (A single slide's missing or bad mask fails only that slide, in the ledger.)"""
    if folder and not (Path(folder).is_dir() and os.access(folder, os.R_OK | os.X_OK)):
        raise UsageError(
            f"tile.tissue.external_masks={folder}: not a readable folder; give the folder of "
            f"per-slide NAME.geojson / NAME.png masks, or leave it empty"
        )


def run(args: argparse.Namespace) -> int:
    paths = RunPaths(Path(args.run_dir))
    cfg = request(args, [f"executor_tile.kind={args.executor}"] if args.executor else [])
    check_external_masks(cfg.tile.tissue.external_masks)
    executor = cfg.executor_tile
    with ExitStack() as held:
        existed = paths.root.is_dir()  # a new run gets its lock once it exists, before any tiling
        lock = held.enter_context(hold_run_or_refuse(paths, "launch tile")) if existed else None
        try:
            refs = prepare_run(paths.root, args.slides, cfg)
        except SourceError as err:
            raise UsageError(str(err)) from None
        if not existed:
            lock = held.enter_context(hold_run_or_refuse(paths, "launch tile"))
        code = _tile(paths, refs, executor, args, lock)
        if code == 0:  # the request becomes the run's config only when the command succeeded
            save_run_config(paths.root, cfg)
    return code


def _tile(paths: RunPaths, refs, executor, args: argparse.Namespace, lock: FileLock | None) -> int:
    pending = pending_indices(paths.root, refs)
    log.info(
        "%d slides: %d already tiled, %d to tile (%s executor, at most %d at once)",
        len(refs),
        len(refs) - len(pending),
        len(pending),
        executor.kind,
        executor.array_parallelism,
    )
    if not pending:
        finalize(paths.root, refs)
        return _report(paths)
    submitit_executor = make_executor(executor, paths.tile_logs, job_name="dcssl-tile")
    with children_under(paths, lock):  # the elements run under this launcher's hold
        jobs = submit_array(
            submitit_executor,
            TileTask(paths.root, args.config, args.overrides),
            pending,
            executor.array_parallelism,
            executor.max_array_size,
            # the running elements' pids: they keep the run should this launcher die before them
            on_start=lambda running: record_pids(lock, [int(job.job_id) for job in running]),
        )
        arrays = sorted({str(job.job_id).split("_")[0] for job in jobs}, key=int)
        if executor.kind == "slurm":
            record_jobs(lock, arrays)  # the arrays keep the run once this launcher lets go
        if executor.kind == "slurm" and not args.wait:
            return _submit_finalize(paths, submitit_executor, arrays, len(pending), executor, lock)
    for line in _collect(jobs, pending):
        log.error("%s", line)
    finalize(paths.root, refs)
    return _report(paths)


def _submit_finalize(paths: RunPaths, submitit_executor, arrays: list[str], n: int, executor, lock) -> int:
    """The job that writes the manifest once, after the last array (each starts after the
    previous ended); it joins the lease."""
    submitit_executor.update_parameters(dependency=f"afterany:{arrays[-1]}")
    final = submitit_executor.submit(FinalizeTask(paths.root))
    record_jobs(lock, [final.job_id])
    print(
        f"submitted array job(s) {', '.join(arrays)}: {n} elements, at most "
        f"{executor.array_parallelism} at once, then job {final.job_id} writes the store "
        f"manifest; logs in {paths.tile_logs}"
    )
    print(f"follow it with: python -m dcssl.launch status {paths.root}")
    return 0
