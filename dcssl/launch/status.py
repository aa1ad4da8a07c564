"""``launch status RUN_DIR [--json]``: slides done / failed (with reasons) / pending, tiles.

Works while the array runs (from the shards and the ledger; no manifest needed). Once every slide
was attempted it writes the store manifest if the finalize job did not (e.g. a plain sbatch array),
under the run lock; while another launcher or job holds the run it leaves that to the holder. ``--json``
prints one object: ``slides``, ``done``, ``pending``, ``tiles`` (counts), ``failed`` (a list of
``{"slide", "stage", "reason"}``), ``notes`` (done slides with something to say), ``manifest``
(path or null) and ``metrics`` (the latest line of metrics.jsonl, or null).
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import asdict
from pathlib import Path

from dcssl.jsonl import read_jsonl
from dcssl.launch.common import check_run_files, existing_run_dir
from dcssl.paths import RunPaths
from dcssl.pipeline.progress import loop_progress
from dcssl.pipeline.report import epoch_table
from dcssl.runlock import RunInUse, hold_run
from dcssl.store import Store
from dcssl.tile.run import Summary, manifest_due, maybe_finalize, summarize

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="the run directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def _store_only(paths: RunPaths) -> Summary:
    """A run without a slide list (e.g. ingested tiles): what the manifest says."""
    if not paths.manifest.is_file():
        return Summary()
    store = Store(paths.store)
    return Summary(slides=len(store.shards), done=len(store.shards), tiles=store.n_tiles)


def _finalize_unless_held(paths: RunPaths, summary: Summary) -> None:
    """Status is a reader: it writes the overdue manifest only with the run to itself (a holder,
    e.g. the finalize job or a tile launcher, writes it anyway); it never waits or refuses."""
    if not manifest_due(paths.root, summary):
        return
    try:
        with hold_run(paths, "launch status (writing the store manifest)"):
            maybe_finalize(paths.root, summary)
    except RunInUse as held:
        log.info("store manifest not written: %s", held)


def collect(run_dir: Path) -> dict:
    paths = RunPaths(run_dir)
    if paths.slide_list.is_file():
        summary = summarize(run_dir)
        _finalize_unless_held(paths, summary)  # an array that ended without its finalize job
    else:
        summary = _store_only(paths)
    manifest = paths.manifest
    metrics = read_jsonl(paths.metrics)
    return {
        **asdict(summary),
        "manifest": str(manifest) if manifest.is_file() else None,
        "metrics": metrics[-1] if metrics else None,
        "loop": loop_progress(run_dir),
        "epochs": [r for r in metrics if r.get("kind") == "epoch"],
    }


def _print_human(report: dict) -> None:
    print(
        f"slides: {report['slides']}  done: {report['done']}  failed: {len(report['failed'])}  "
        f"pending: {report['pending']}  tiles: {report['tiles']}"
    )
    for item in report["failed"]:
        print(f"  failed  {item['slide']}  [{item['stage']}] {item['reason']}")
    for item in report["notes"]:
        print(f"  note    {item['slide']}  {item['reason']}")
    print(f"manifest: {report['manifest'] or 'not yet (written when every slide was attempted)'}")
    if report["loop"]["steps"]:
        print(f"\nDeepCluster loop: {report['loop']['done']} of {len(report['loop']['steps'])} steps done")
        for step in report["loop"]["steps"]:
            where = f"job {step['job_id']}" if step.get("job_id") else ""
            log_hint = f"  log: {step['log']}" if step["status"] in ("failed", "interrupted") else ""
            print(f"  {step['name']:<13} {step['status']:<10} {where}{log_hint}")
    if report["epochs"]:
        print()
        print("\n".join(epoch_table(report["epochs"])))
    elif report["metrics"]:
        latest = {k: v for k, v in report["metrics"].items() if k != "time"}
        print("latest metrics: " + "  ".join(f"{k}={v}" for k, v in latest.items()))


def run(args: argparse.Namespace) -> int:
    run_dir = existing_run_dir(Path(args.run_dir))
    check_run_files(run_dir)
    report = collect(run_dir)
    if args.json:
        print(json.dumps(report, default=str))
    else:
        _print_human(report)
    return 0
