"""Build RUN/report/ for one epoch: gather the figures, draw, write, publish atomically."""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from dcssl.epochs.features import bank_if_complete
from dcssl.epochs.labels import newest_with_features, read_labels, read_stats
from dcssl.jsonl import read_jsonl
from dcssl.paths import RunPaths
from dcssl.report import charts
from dcssl.report.config import ReportConfig
from dcssl.report.html import CSS
from dcssl.report.pages import atlas_page, cluster_page, run_page
from dcssl.report.picks import by_cluster, cluster_distances, cluster_picks
from dcssl.report.slides import slide_entries, write_slide_pages
from dcssl.report.summary import ClusterCard, chance_nmi, crosstab, flags, site_of
from dcssl.report.tiles import QC_NAMES, montage, read_tiles
from dcssl.store import Store

__all__ = ["ReportError", "build_report", "newest_reportable"]

log = logging.getLogger(__name__)

# Below this many tiles a cluster, NMI and purity move by chance: the run page says so and draws
# the NMI of unrelated labellings (≈ 0.015 at 90 a cluster and k = 6, 0.50 at 100 and k = 10,000;
# cheap then: at most this many tiles × k, 1 s for 1 M).
FEW_PER_CLUSTER = 100


class ReportError(ValueError):
    """The report cannot be built (nothing clustered, features pruned); the message says why."""


def newest_reportable(run_dir: Path) -> int:
    """The newest epoch with labels and a feature bank (older banks are pruned)."""
    epoch = newest_with_features(run_dir)
    if epoch is None:
        raise ReportError(
            f"{run_dir}: no clustered epoch with its features yet; run `python -m dcssl.launch train {run_dir}`"
        )
    return epoch


def _cards(run_dir: Path, store: Store, epoch: int, cfg: ReportConfig):
    n = store.n_tiles
    labels = read_labels(run_dir, epoch, n)
    features = bank_if_complete(run_dir, epoch)
    if labels is None or features is None:
        raise ReportError(
            f"epoch {epoch}: labels or features are missing (old feature banks are pruned); report "
            f"epoch {newest_reportable(run_dir)} or raise loop.keep_features"
        )
    distances = cluster_distances(labels, features)
    members = by_cluster(labels)
    shard_of = np.repeat(np.arange(len(store.shards), dtype=np.int32), np.diff(store.offsets))
    slides = crosstab(labels, shard_of)
    prev = read_labels(run_dir, epoch - 1, n)
    parents = crosstab(labels, prev) if prev is not None else None
    classes = store.labels()
    purity = crosstab(labels, classes, top=1) if classes is not None else None
    cards = []
    for c in sorted(members, key=lambda c: (-len(members[c]), c)):
        size = len(members[c])
        card = ClusterCard(
            cluster=c,
            size=size,
            slides=slides.distinct[c],
            top_slides=[(store.shards[s].slide_id, m) for s, m in slides.top[c]],
            picks=cluster_picks(members[c], distances, cfg.page_tiles, cfg.bins, cfg.seed, c),
        )
        if parents is not None and c in parents.top:
            card.parents = [(p, m / size) for p, m in parents.top[c]]
        if purity is not None:
            majority, m = purity.top[c][0]
            card.purity, card.majority = m / size, str(majority)
        sites: dict[str, int] = {}
        for slide_id, m in card.top_slides:
            if site_of(slide_id):
                sites[site_of(slide_id)] = sites.get(site_of(slide_id), 0) + m
        card.sites = sorted(sites.items(), key=lambda kv: -kv[1])
        cards.append(card)
    return labels, distances, cards


def _card_positions(n_picks: int, card_tiles: int) -> np.ndarray:
    """Card montage = picks spread from nearest to farthest (the nearest first)."""
    return np.unique(np.linspace(0, n_picks - 1, min(card_tiles, n_picks)).round().astype(int))


def _tile_row(store: Store, qc: dict, j: int, distance: float) -> list:
    """Slide, level-0 x, y and distance to the centre of the j-th tile read."""
    x, y = (int(v) for v in qc["xy"][j])
    return [store.shards[int(qc["shard"][j])].slide_id, x, y, f"{distance:.4f}"]


def _write_cards(out: Path, store: Store, chunk, distances, epoch: int, run_dir: str, cfg: ReportConfig):
    """Montages, flags and cluster pages of one atlas page's cards: only its tiles are in memory."""
    if not chunk:
        return
    images, qc = read_tiles(store, np.concatenate([c.picks for c in chunk]), cfg.tile_px)
    at = {int(g): i for i, g in enumerate(qc["index"])}
    for card in chunk:
        rows = [at[int(g)] for g in card.picks]
        card.flags = flags({name: qc[name][rows] for name in QC_NAMES}, cfg)
        tiles = [images[int(g)] for g in card.picks]
        montage(tiles, 8, cfg.tile_px).save(out / "img" / f"page-{card.cluster}.jpg", quality=85)
        shown = [tiles[i] for i in _card_positions(len(tiles), cfg.card_tiles)]
        montage(shown, 4, cfg.tile_px).save(out / "img" / f"card-{card.cluster}.jpg", quality=85)
        listing = [_tile_row(store, qc, j, distances[g]) for g, j in zip(card.picks, rows)]
        page_html = cluster_page(card, epoch, run_dir, [[i + 1, *row] for i, row in enumerate(listing)])
        (out / "clusters" / f"c{card.cluster}.html").write_text(page_html)


def _write_clusters(out: Path, store: Store, cards, distances, epoch: int, run_dir: str, cfg: ReportConfig):
    """The atlas page by page (bounded memory at k = 10,000: one page's tiles at a time)."""
    pages = max(1, math.ceil(len(cards) / cfg.cards_per_page))
    for p in range(pages):
        chunk = cards[p * cfg.cards_per_page : (p + 1) * cfg.cards_per_page]
        for card in chunk:
            card.page = p + 1
        _write_cards(out, store, chunk, distances, epoch, run_dir, cfg)
        (out / f"atlas-{p + 1:04d}.html").write_text(
            atlas_page(chunk, p + 1, pages, epoch, run_dir, len(cards))
        )


def _caveats(n_tiles: int, cards, k: int, chance: float | None) -> list[str]:
    out = []
    per_cluster = n_tiles / max(len(cards), 1)
    if chance is not None:
        out.append(
            f"Few tiles: {n_tiles} tiles over {len(cards)} clusters is {per_cluster:.0f} per cluster, so "
            "NMI, sizes and purity rest on few tiles each and move by chance from epoch to epoch. "
            f"Two unrelated labellings with these cluster sizes already score NMI ≈ {chance:.3f} "
            "(the dotted line on the NMI chart): read NMI against that, not against 0."
        )
    if cards and len(cards) < k:
        out.append(f"{k - len(cards)} of k = {k} clusters are empty at this epoch.")
    return out


def _run_context(run_dir: Path, store: Store, epoch: int, cards, entries) -> tuple[dict, dict[str, bytes]]:
    records = read_jsonl(RunPaths(run_dir).metrics)
    rows = [r for r in records if r.get("kind") == "epoch"]
    k = int(read_stats(run_dir, epoch).get("k", len(cards)))
    sizes = np.array([c.size for c in cards])
    few = store.n_tiles < FEW_PER_CLUSTER * max(len(cards), 1)
    chance = chance_nmi(sizes) if few and len(cards) else None
    images = {
        "loss": charts.loss_chart([r for r in records if r.get("kind") == "train_window"], rows),
        "nmi": charts.nmi_chart(rows, chance),
        "sizes": charts.sizes_chart(sizes, epoch),
        "seconds": charts.seconds_chart(rows),
    }
    config = RunPaths(run_dir).config
    ctx = {
        "run_name": run_dir.name,
        "epoch": epoch,
        "k": k,
        "epochs": rows,
        "charts": list(images),
        "caveats": _caveats(store.n_tiles, cards, k, chance),
        "n_tiles": store.n_tiles,
        "n_slides": len(store.shards),
        "slides": [[e["slide"], e["status"], e.get("tiles", 0), e.get("reason", "")] for e in entries],
        "done": sum(e["status"] == "tiled" for e in entries),
        "failed": sum(e["status"] != "tiled" for e in entries),
        "exclusions": [r for r in records if r.get("kind") == "exclude"],
        "config": config.read_text() if config.is_file() else "(no config.yaml)",
    }
    return ctx, images


def _publish(tmp: Path, final: Path) -> None:
    """Swap the finished folder in: readers see the old report or the new one, never half."""
    old = final.parent / f".{final.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def build_report(run_dir: str | Path, epoch: int | None = None, cfg: ReportConfig | None = None) -> Path:
    """Write RUN/report/ for ``epoch`` (default: the newest reportable); returns index.html."""
    run_dir, cfg = Path(run_dir), cfg or ReportConfig()
    started = time.monotonic()
    store = Store(RunPaths(run_dir).store)
    epoch = newest_reportable(run_dir) if epoch is None else epoch
    labels, distances, cards = _cards(run_dir, store, epoch, cfg)
    tmp = Path(tempfile.mkdtemp(prefix=".report.", suffix=".partial", dir=run_dir))
    try:
        for sub in ("img", "clusters"):
            (tmp / sub).mkdir()
        (tmp / "style.css").write_text(CSS)
        _write_clusters(tmp, store, cards, distances, epoch, str(run_dir), cfg)
        entries = slide_entries(run_dir, store, labels)
        write_slide_pages(tmp, entries, epoch, cfg.slides_per_page, store, labels)
        ctx, images = _run_context(run_dir, store, epoch, cards, entries)
        for name, png in images.items():
            (tmp / "img" / f"{name}.png").write_bytes(png)
        (tmp / "index.html").write_text(run_page(ctx))
        tmp.chmod(0o755)
        _publish(tmp, RunPaths(run_dir).report)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("report of epoch %d: %d cluster cards in %.1f s", epoch, len(cards), time.monotonic() - started)
    return RunPaths(run_dir).report / "index.html"
