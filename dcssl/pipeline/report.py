"""Watching the loop: one ``epoch`` record per epoch, TensorBoard scalars, charts/progress.png.

The per-step records come from the train segments (``train_window``, ``train_epoch``) and the
clustering job (``cluster``); this module joins them per epoch and draws what a person would
rather look at than read: loss and NMI(t-1, t) against epoch, and the cluster-size distribution.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from dcssl.epochs.labels import complete_epochs, read_stats
from dcssl.jsonl import append_jsonl, read_jsonl
from dcssl.paths import RunPaths
from hpc.checkpoint import atomic_path

__all__ = ["epoch_summary", "publish_epoch", "publish_missing", "draw_progress", "epoch_table"]

log = logging.getLogger(__name__)


def _last(records: list[dict], kind: str, epoch: int) -> dict:
    found = [r for r in records if r.get("kind") == kind and r.get("epoch") == epoch]
    return found[-1] if found else {}


def epoch_summary(records: list[dict], epoch: int) -> dict:
    """Join epoch's train and cluster records into one ``epoch`` record."""
    train, cluster = _last(records, "train_epoch", epoch), _last(records, "cluster", epoch)
    cluster_seconds = cluster.get("seconds") or {}
    total_cluster = cluster_seconds.get("total") if isinstance(cluster_seconds, dict) else None
    return {
        "kind": "epoch",
        "epoch": epoch,
        "loss": train.get("loss"),
        "nmi_prev": cluster.get("nmi_prev"),
        "k": cluster.get("k"),
        "clusters_used": cluster.get("clusters_used"),
        "empty_split": cluster.get("empty_split"),
        "largest_share": cluster.get("largest_share"),
        "inertia": cluster.get("inertia"),
        "warnings": cluster.get("warnings") or [],
        "stale_fraction": train.get("stale_fraction"),
        "seconds": {
            "train": train.get("seconds"),
            "cluster": total_cluster,
            "relabel": train.get("relabel_s"),
        },
    }


def _cluster_sizes(paths: RunPaths, epoch: int) -> np.ndarray | None:
    sizes = read_stats(paths.root, epoch).get("sizes")
    return np.asarray(sizes) if sizes is not None else None


def draw_progress(paths: RunPaths, records: list[dict], target: Path | None = None) -> Path | None:
    """Redraw charts/progress.png (or ``target``) atomically; None if there is nothing to draw yet."""
    epochs = [r for r in records if r.get("kind") == "epoch"]
    windows = [r for r in records if r.get("kind") == "train_window"]
    if not epochs and not windows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dcssl.report.charts import plot_losses

    fig, (ax_loss, ax_nmi, ax_sizes) = plt.subplots(1, 3, figsize=(15, 4.2))
    plot_losses(ax_loss, windows, epochs)
    ax_loss.set_xlabel("epoch")
    ax_loss.grid(alpha=0.3)
    ax_loss.set_title("training loss")
    with_nmi = [r for r in epochs if r.get("nmi_prev") is not None]
    ax_nmi.plot([r["epoch"] for r in with_nmi], [r["nmi_prev"] for r in with_nmi], "o-", color="tab:green")
    ax_nmi.set_ylim(0, 1)
    ax_nmi.set_xlabel("epoch")
    ax_nmi.set_title("NMI(labels t-1, labels t)")
    ax_nmi.grid(alpha=0.3)
    last = max((r["epoch"] for r in epochs), default=None)
    sizes = _cluster_sizes(paths, last) if last is not None else None
    if sizes is not None and sizes.size:
        ax_sizes.bar(np.arange(sizes.size), np.sort(sizes)[::-1], width=1.0, color="tab:purple")
        ax_sizes.set_yscale("log")
        ax_sizes.set_xlabel("cluster (sorted by size)")
    ax_sizes.set_title(f"cluster sizes, epoch {last}" if last is not None else "cluster sizes")
    fig.tight_layout()
    target = target or paths.charts / "progress.png"
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return target


def _write_tensorboard(paths: RunPaths, summary: dict) -> None:
    from dcssl.tbwriter import ScalarWriter

    with ScalarWriter(paths.root) as writer:
        for key in ("loss", "nmi_prev", "clusters_used", "empty_split", "largest_share", "stale_fraction"):
            if summary.get(key) is not None:
                writer.add(f"epoch/{key}", summary[key], summary["epoch"])
        for phase, seconds in summary["seconds"].items():
            if seconds is not None:
                writer.add(f"seconds/{phase}", seconds, summary["epoch"])


def publish_epoch(paths: RunPaths, epoch: int) -> dict:
    """Append epoch's summary (once), write its TensorBoard scalars, redraw the chart."""
    records = read_jsonl(paths.metrics)
    summary = _last(records, "epoch", epoch)
    if not summary:
        summary = epoch_summary(records, epoch)
        append_jsonl(paths.metrics, summary)
        _write_tensorboard(paths, summary)
        records.append(summary)
    draw_progress(paths, records)
    log.info(
        "epoch %d: loss %s, NMI(t-1,t) %s, clusters used %s",
        epoch,
        summary.get("loss"),
        summary.get("nmi_prev"),
        summary.get("clusters_used"),
    )
    for warning in summary.get("warnings") or []:
        log.warning("epoch %d: DEGENERATE LABELS: %s", epoch, warning)
    return summary


def publish_missing(paths: RunPaths) -> Path | None:
    """Summarise every clustered epoch that has no ``epoch`` record yet (e.g. after a chain of
    plain sbatch jobs), then redraw the chart; returns its path (None: nothing to draw)."""
    done = {r.get("epoch") for r in read_jsonl(paths.metrics) if r.get("kind") == "epoch"}
    for epoch in complete_epochs(paths.root):
        if epoch not in done:
            publish_epoch(paths, epoch)
    return draw_progress(paths, read_jsonl(paths.metrics))


def epoch_table(records: list[dict]) -> list[str]:
    """Text rows of the per-epoch metrics, for ``status``; a degenerate clustering is flagged with
    ``!`` after its row and its warnings on the lines below."""
    rows = [
        f"{'epoch':>5} {'loss':>8} {'NMI(t-1,t)':>10} {'used':>6} {'split':>5} "
        f"{'largest':>7} {'train s':>8} {'cluster s':>9}"
    ]

    def fmt(value, spec):
        return format(value, spec) if isinstance(value, (int, float)) else "-"

    for r in (r for r in records if r.get("kind") == "epoch"):
        sec = r.get("seconds") or {}
        rows.append(
            f"{r['epoch']:>5} {fmt(r.get('loss'), '8.4f')} {fmt(r.get('nmi_prev'), '10.3f')} "
            f"{fmt(r.get('clusters_used'), '6d')} {fmt(r.get('empty_split'), '5d')} "
            f"{fmt(r.get('largest_share'), '7.3f')} {fmt(sec.get('train'), '8.1f')} "
            f"{fmt(sec.get('cluster'), '9.1f')}" + (" !" if r.get("warnings") else "")
        )
        rows += [f"{'':>5} ! WARNING: {w}" for w in r.get("warnings") or []]
    return rows
