"""``python -m dcssl.bench report [--k 10000] [--per-cluster 20]``: the report at k = 10,000.

A synthetic clustered run (``dcssl.report.synthetic``: k clusters, ``per-cluster`` tiles each,
100 slides) is reported twice, each in a fresh process so peak memory is its own:

- dcssl: ``build_report`` — two streaming passes over the bank for the distances, then only the
  shown tiles read by global index, one pass over the shards that hold them;
- baseline: the same picks by ``dcssl.evaluate.curate.select`` (per-cluster gathers of the
  bank), each shown tile read with ``Store.read_tile`` (one shard open per tile) — what the
  existing API offers without the report's reader.

Prints seconds and peak RSS of both, the ratio, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _dcssl(run_dir: str, queue) -> None:
    from dcssl.report import build_report

    started = time.perf_counter()
    build_report(Path(run_dir))
    queue.put({"seconds": time.perf_counter() - started, "peak_mb": _peak_mb()})


def _baseline(run_dir: str, queue) -> None:
    from dcssl.epochs.features import bank_if_complete
    from dcssl.epochs.labels import read_labels
    from dcssl.evaluate.config import CurateConfig
    from dcssl.evaluate.curate import select
    from dcssl.paths import RunPaths
    from dcssl.report.config import ReportConfig
    from dcssl.store import Store

    started = time.perf_counter()
    store, cfg = Store(RunPaths(Path(run_dir)).store), ReportConfig()
    labels, features = read_labels(Path(run_dir), 1, store.n_tiles), bank_if_complete(Path(run_dir), 1)
    chosen = select(labels, features, CurateConfig(per_cluster=cfg.page_tiles, bins=cfg.bins))
    for index in chosen["source_index"]:
        store.read_tile(int(index))
    queue.put({"seconds": time.perf_counter() - started, "peak_mb": _peak_mb()})


def _measure(target, run_dir: Path) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    proc = context.Process(target=target, args=(str(run_dir), queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dcssl.bench report")
    parser.add_argument("--k", type=int, default=10_000, help="clusters (default 10,000)")
    parser.add_argument("--per-cluster", type=int, default=20, help="tiles per cluster (default 20)")
    parser.add_argument("--dim", type=int, default=64, help="feature dimension (default 64)")
    args = parser.parse_args(argv)
    from dcssl.report.synthetic import make_clustered_run

    with tempfile.TemporaryDirectory(prefix="dcssl-bench-report-") as tmp:
        run_dir = Path(tmp) / "run"
        started = time.perf_counter()
        truth = make_clustered_run(
            run_dir, k=args.k, per_cluster=args.per_cluster, n_slides=100, dim=args.dim
        )
        print(f"synthetic run: {truth['n']} tiles, k = {args.k}, in {time.perf_counter() - started:.1f} s")
        ours = _measure(_dcssl, run_dir)
        print(f"dcssl report   : {ours['seconds']:.1f} s, peak {ours['peak_mb']:.0f} MB")
        base = _measure(_baseline, run_dir)
        print(f"baseline picks : {base['seconds']:.1f} s, peak {base['peak_mb']:.0f} MB (no pages drawn)")
    ratio = base["seconds"] / ours["seconds"]
    print(f"ratio (baseline / dcssl seconds): {ratio:.2f}")
    record = {
        "bench": "report",
        "k": args.k,
        "tiles": truth["n"],
        "dim": args.dim,
        "dcssl_s": round(ours["seconds"], 2),
        "dcssl_peak_mb": round(ours["peak_mb"]),
        "baseline_s": round(base["seconds"], 2),
        "baseline_peak_mb": round(base["peak_mb"]),
        "ratio": round(ratio, 3),
    }
    print(json.dumps(record))
    return 0
