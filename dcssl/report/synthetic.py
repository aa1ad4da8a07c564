"""A synthetic clustered run with known answers, for the report's tests and benchmark.

``make_clustered_run`` writes a store whose tiles come in ``k`` known clusters: each cluster lives
on one slide (cluster c on slide c mod S), has one class (c mod n_classes), a flat colour of its
own and one tile exactly at its centre in feature space (global index ``centre_index(c)``);
epoch 0 and epoch 1 label the same clusters under a permutation (so each epoch-1 cluster has one
parent holding 100 % of its tiles). Every shard carries an overview (thumbnail, mask, dropped
candidates) as the tile stage writes it, and the ledger records one failed slide.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dcssl.epochs.features import write_bank
from dcssl.paths import RunPaths
from dcssl.store import ShardWriter, append_ledger, build_manifest, encode_jpeg
from dcssl.tile.qc import overview_images
from dcssl.train.synthetic import write_pseudo_labels

__all__ = ["make_clustered_run", "FAILED_SLIDE", "FAILED_REASON"]

FAILED_SLIDE = "broken-slide"
FAILED_REASON = "not a slide format openslide can read (corrupt or truncated)"
TILE = 32


def _shard(path: Path, slide: str, clusters: np.ndarray, per: int, n_classes: int, rng) -> None:
    n = len(clusters) * per
    side = max(1, int(np.ceil(np.sqrt(n))))
    colours = {int(c): rng.integers(40, 230, 3) for c in clusters}
    # one colour per cluster, JPEG-encoded once (a 10,000-cluster store stays quick to write)
    encoded = {
        c: encode_jpeg(np.broadcast_to(col, (TILE, TILE, 3)).astype(np.uint8), 80)
        for c, col in colours.items()
    }
    tiles = [encoded[int(c)] for c in np.repeat(clusters, per)]
    cells = np.arange(n)
    coords = np.stack([(cells % side) * TILE, (cells // side) * TILE], 1)
    view = np.full((side * 4, side * 4, 3), 235, np.uint8)
    mask = np.zeros(view.shape[:2], bool)
    mask[: (n // side + 1) * 4, :] = True
    with ShardWriter(
        path,
        slide_id=slide,
        tile_size=TILE,
        mpp=0.5,
        with_labels=True,
        qc_columns=("blur", "pen"),
        attrs={"step0": TILE},
    ) as w:
        w.append(
            tiles,
            coords,
            np.ones(n),
            np.repeat(clusters % n_classes, per),
            qc={"blur": np.full(n, 500.0), "pen": np.zeros(n)},
        )
        thumb, mask_png, scale = overview_images(view, mask, TILE / 4)
        w.put("overview/thumbnail", thumb, scale=scale)
        w.put("overview/mask", mask_png, scale=scale)
        w.put("overview/dropped", np.array([[side * TILE, 0]], np.int64))


def make_clustered_run(
    run_dir: str | Path,
    *,
    k: int = 12,
    per_cluster: int = 10,
    n_slides: int = 3,
    dim: int = 16,
    n_classes: int = 3,
    seed: int = 0,
) -> dict:
    """Write the run; returns the known answers (labels per epoch, centre tiles, permutation)."""
    run_dir, rng = Path(run_dir), np.random.default_rng(seed)
    order = []
    for s in range(n_slides):
        clusters = np.arange(s, k, n_slides)
        _shard(
            RunPaths(run_dir).shard(f"slide-{s:04d}"),
            f"slide-{s:04d}",
            clusters,
            per_cluster,
            n_classes,
            rng,
        )
        order.append(np.repeat(clusters, per_cluster))
    store = build_manifest(RunPaths(run_dir).store)
    labels0 = np.concatenate(order).astype(np.int32)
    append_ledger(
        store.root, {"slide": FAILED_SLIDE, "status": "failed", "stage": "open", "reason": FAILED_REASON}
    )
    centres = rng.normal(size=(k, dim)).astype(np.float32)
    noise = rng.normal(scale=0.3, size=(len(labels0), dim)).astype(np.float32)
    first = np.r_[0, np.flatnonzero(np.diff(labels0)) + 1]  # the first tile of each cluster run
    noise[first] = 0.0  # … sits exactly on its centre
    write_bank(run_dir, 1, (centres[labels0] + noise).astype(np.float16))
    perm = rng.permutation(k).astype(np.int32)
    write_pseudo_labels(run_dir, 0, labels0, k)
    write_pseudo_labels(run_dir, 1, perm[labels0], k)
    centre_index = {int(perm[labels0[i]]): int(i) for i in first}
    return {
        "labels0": labels0,
        "labels1": perm[labels0],
        "perm": perm,
        "centre_index": centre_index,
        "n": len(labels0),
    }
