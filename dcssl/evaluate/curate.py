"""Diverse curation from a clustered run (DeepCluster++, as used to build STARC-9).

For each cluster of an epoch: the distance of every member to the cluster's centre, the members
sorted by it and cut into ``bins`` equal-frequency bins (quantiles), and the same number of tiles
drawn at random from each bin — so a pick spans typical tiles near the centre and unusual ones at
its edge instead of only the densest core. ``per_cluster`` tiles per cluster (all of a smaller one).

The centre is the mean direction of the members' L2-normalised features in the feature bank's own
space, and the distance is the cosine distance to it: the same for any clustering method (k-means
on PCA-whitened features or RCC), which keep their centroids in spaces of their own.

Outputs under ``RUN/curated/``:

    manifest.json   the selection: {"format": "dcssl-curated/1", "source_store", "epoch",
                    "per_cluster", "bins", "seed", "n_tiles", "n_clusters",
                    "shards": [{"name", "slide_id", "rows": [row, …]}, …]  (source shard rows),
                    "clusters": [{"cluster", "size", "picked"}, …], "store": "store" | null}
    selection.npz   arrays in curated order: source_index (global index in the source store),
                    cluster, bin, distance
    store/          (copy_tiles) a tile store of the chosen tiles: source shards in source order,
                    chosen rows in row order — curated global index j ↔ source_index[j]
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np

from dcssl.epochs.features import bank_dir, bank_if_complete
from dcssl.epochs.labels import labels_file, newest_with_features, read_labels
from dcssl.evaluate.config import CurateConfig
from dcssl.paths import RunPaths
from dcssl.store import ShardWriter, Store, build_manifest
from hpc.checkpoint import atomic_path, atomic_write_text

__all__ = ["CurateError", "sample_cluster", "select", "curate_run", "newest_epoch"]

log = logging.getLogger(__name__)
FORMAT = "dcssl-curated/1"


class CurateError(ValueError):
    """The run cannot be curated (no finished clustering, no features); the message says why."""


def _quotas(sizes: np.ndarray, total: int) -> np.ndarray:
    """``total`` picks spread evenly over bins of the given sizes, never more than a bin holds."""
    quota = np.zeros(len(sizes), dtype=np.int64)
    left = total
    while left > 0:
        open_bins = np.flatnonzero(quota < sizes)
        share = np.full(len(open_bins), left // len(open_bins))
        share[np.linspace(0, len(open_bins) - 1, left % len(open_bins)).round().astype(int)] += 1
        grant = np.minimum(share, sizes[open_bins] - quota[open_bins])
        quota[open_bins] += grant
        left -= int(grant.sum())
    return quota


def sample_cluster(
    distances: np.ndarray, n: int, bins: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(positions picked, their bin) among one cluster's members, given their distances."""
    m = len(distances)
    order = np.argsort(distances, kind="stable")
    n_bins = max(1, min(bins, n, m))
    parts = np.array_split(order, n_bins)  # equal-frequency bins, nearest first
    quota = _quotas(np.array([len(p) for p in parts]), min(n, m))
    picks, which = [], []
    for b, (part, q) in enumerate(zip(parts, quota)):
        picks.append(rng.choice(part, size=int(q), replace=False))
        which.append(np.full(int(q), b, dtype=np.int32))
    return np.concatenate(picks), np.concatenate(which)


def _distances(features: np.ndarray) -> np.ndarray:
    x = features.astype(np.float32)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    centre = x.mean(0)
    centre /= max(float(np.linalg.norm(centre)), 1e-12)
    return 1.0 - x @ centre


def select(labels: np.ndarray, features: np.ndarray, cfg: CurateConfig) -> dict[str, np.ndarray]:
    """Chosen global indices (sorted) with their cluster, bin and distance."""
    labels = np.asarray(labels)
    order = np.argsort(labels, kind="stable")
    bounds = np.flatnonzero(np.diff(labels[order])) + 1
    chosen = []
    for members in np.split(order, bounds):
        if len(members) == 0 or labels[members[0]] < 0:  # negative: unassigned (RCC noise)
            continue
        c = int(labels[members[0]])
        distance = _distances(np.asarray(features[np.sort(members)]))
        members = np.sort(members)
        rng = np.random.default_rng([cfg.seed, c])
        pos, which = sample_cluster(distance, cfg.per_cluster, cfg.bins, rng)
        chosen.append((members[pos], np.full(len(pos), c), which, distance[pos]))
    index, cluster, bins, dist = (np.concatenate(a) for a in zip(*chosen))
    keep = np.argsort(index)
    return {
        "source_index": index[keep].astype(np.int64),
        "cluster": cluster[keep].astype(np.int32),
        "bin": bins[keep].astype(np.int32),
        "distance": dist[keep].astype(np.float32),
    }


def newest_epoch(run_dir: Path) -> int:
    """The newest epoch whose labels are complete and whose feature bank still exists."""
    epoch = newest_with_features(run_dir)
    if epoch is None:
        raise CurateError(
            f"{run_dir}: no epoch with both complete labels and features; train and "
            f"cluster the run first (`python -m dcssl.launch train {run_dir}`)"
        )
    return epoch


def _load_epoch(run_dir: Path, epoch: int, n_tiles: int) -> tuple[np.ndarray, np.ndarray]:
    labels, features = read_labels(run_dir, epoch), bank_if_complete(run_dir, epoch)
    if labels is None or features is None:
        raise CurateError(
            f"epoch {epoch}: labels or features are not complete (features of old "
            f"epochs are pruned); pass curate.epoch=-1 for the newest usable one"
        )
    if len(features) != n_tiles:
        raise CurateError(
            f"{bank_dir(run_dir, epoch)}: {len(features)} rows but the store has {n_tiles} tiles"
        )
    if len(labels) != n_tiles:
        raise CurateError(f"{labels_file(run_dir, epoch)}: {len(labels)} labels for {n_tiles} tiles")
    return labels, features


def _copy_tiles(store: Store, index: np.ndarray, root: Path) -> None:
    shard, row = store.locate(index)
    names = []
    for s in np.unique(shard):
        rows = row[shard == s]
        info = store.shards[int(s)]
        names.append(info.name)
        with store.open_shard(int(s)) as src:
            attrs = dict(src.attrs)
            labelled = "labels" in src
            with ShardWriter(
                root / "shards" / info.name,
                slide_id=info.slide_id,
                tile_size=int(attrs.get("tile_size", 0)),
                encoding=str(attrs.get("encoding", "jpeg")),
                mpp=float(attrs.get("mpp", float("nan"))),
                level=int(attrs.get("level", 0)),
                source_md5=str(attrs.get("source_md5", "")),
                with_labels=labelled,
            ) as writer:
                writer.append(
                    src["tiles"][rows],
                    src["coords"][rows],
                    src["tissue"][rows],
                    src["labels"][rows] if labelled else None,
                )
    for stale in (root / "shards").glob("*.h5"):
        if stale.name not in names:
            stale.unlink()  # from an earlier curation with other settings
    build_manifest(root, names)


def curate_run(run_dir: str | Path, cfg: CurateConfig) -> dict:
    """Select (and copy) the curated subset; the manifest document."""
    run_dir = Path(run_dir)
    store = Store(RunPaths(run_dir).store)
    epoch = newest_epoch(run_dir) if cfg.epoch < 0 else cfg.epoch
    out = RunPaths(run_dir).curated
    settings = {**asdict(cfg), "epoch": epoch}
    manifest = RunPaths(run_dir).curated_manifest
    if manifest.is_file():
        previous = json.loads(manifest.read_text())
        if previous.get("settings") == settings:
            log.info("%s already holds this selection: nothing to do", manifest)
            return previous
    labels, features = _load_epoch(run_dir, epoch, store.n_tiles)
    chosen = select(labels, features, cfg)
    index = chosen["source_index"]
    shard, row = store.locate(index)
    sizes = np.bincount(labels[labels >= 0])
    picked = np.bincount(chosen["cluster"], minlength=len(sizes))
    document = {
        "format": FORMAT,
        "source_store": str(store.root.resolve()),
        "epoch": epoch,
        "per_cluster": cfg.per_cluster,
        "bins": cfg.bins,
        "seed": cfg.seed,
        "n_tiles": int(len(index)),
        "n_clusters": int(np.count_nonzero(sizes)),
        "shards": [
            {
                "name": store.shards[int(s)].name,
                "slide_id": store.shards[int(s)].slide_id,
                "rows": row[shard == s].tolist(),
            }
            for s in np.unique(shard)
        ],
        "clusters": [
            {"cluster": int(c), "size": int(sizes[c]), "picked": int(picked[c])}
            for c in np.flatnonzero(sizes)
        ],
        "store": "store" if cfg.copy_tiles else None,
        "settings": settings,
    }
    with atomic_path(RunPaths(run_dir).curated_selection) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **chosen)
    if cfg.copy_tiles:
        _copy_tiles(store, index, RunPaths(run_dir).curated_store)
    elif RunPaths(run_dir).curated_store.is_dir():
        shutil.rmtree(RunPaths(run_dir).curated_store)
    atomic_write_text(manifest, json.dumps(document))  # last: it marks the curation complete
    log.info(
        "curated %d tiles from %d clusters (epoch %d) into %s", len(index), document["n_clusters"], epoch, out
    )
    return document
