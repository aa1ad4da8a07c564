"""The report on a synthetic run with known clusters: cards, nearest tiles, parents, purity, slides,
paging, bad input. (The browser checks of the same pages are in tests/integration.)"""

from __future__ import annotations

import re

import numpy as np
import pytest

from dcssl.epochs.features import bank_if_complete
from dcssl.epochs.labels import read_labels
from dcssl.launch.__main__ import main as launch
from dcssl.report import build_report
from dcssl.report.config import ReportConfig
from dcssl.report.picks import by_cluster, cluster_distances, cluster_picks
from dcssl.report.summary import chance_nmi, crosstab
from dcssl.report.synthetic import FAILED_REASON, FAILED_SLIDE, make_clustered_run

K = 12


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("report") / "run"
    truth = make_clustered_run(run_dir, k=K, per_cluster=10, n_slides=3)
    build_report(run_dir, cfg=ReportConfig(cards_per_page=5, card_tiles=4, page_tiles=8, bins=3))
    return run_dir, truth


def _cards(html: str) -> list[str]:
    return re.findall(r'<div class="card[^"]*" id="c(\d+)">', html)


def test_every_cluster_has_one_card_largest_first_over_the_pages(synthetic):
    run_dir, _ = synthetic
    pages = sorted((run_dir / "report").glob("atlas-*.html"))
    assert [p.name for p in pages] == ["atlas-0001.html", "atlas-0002.html", "atlas-0003.html"]
    cards = [c for p in pages for c in _cards(p.read_text())]
    assert sorted(int(c) for c in cards) == list(range(K))
    for c in cards:
        assert (run_dir / "report" / "img" / f"card-{c}.jpg").stat().st_size > 0
        assert (run_dir / "report" / "clusters" / f"c{c}.html").is_file()


def test_nearest_tile_is_the_one_on_the_centre_and_picks_span_the_bins(synthetic):
    run_dir, truth = synthetic
    labels, features = read_labels(run_dir, 1, truth["n"]), bank_if_complete(run_dir, 1)
    distances = cluster_distances(labels, features)
    for c, members in by_cluster(labels).items():
        picks = cluster_picks(members, distances, 8, 3, 0, c)
        assert picks[0] == truth["centre_index"][c]
        assert len(set(picks.tolist())) == 8 and set(picks) <= set(members)
        assert distances[picks[-1]] >= np.quantile(distances[members], 2 / 3) - 1e-6  # from the far bin


def test_cards_name_the_parent_the_slide_and_the_class(synthetic):
    run_dir, truth = synthetic
    html = "".join(p.read_text() for p in (run_dir / "report").glob("atlas-*.html"))
    inverse = np.argsort(truth["perm"])
    for c in range(K):
        card = html.split(f'id="c{c}"')[1].split('<div class="card')[0]
        assert f"parents (epoch 0): {inverse[c]} (100%)" in card
        assert f"top slides: slide-{inverse[c] % 3:04d} (10)" in card and "10</b> tiles · 1 slide<" in card
        assert f"purity 100% · majority {inverse[c] % 3}" in card
        assert f"exclude {run_dir} --epoch 1 --clusters {c}<" in card


def test_chance_nmi_is_sklearns_nmi_of_shuffled_labels():
    from sklearn.metrics import normalized_mutual_info_score

    sizes = np.array([46, 50, 68, 25, 20, 27])  # the demo's epoch-5 clusters: 236 tiles
    labels = np.repeat(np.arange(len(sizes)), sizes)
    rng = np.random.default_rng(0)
    expected = np.mean([normalized_mutual_info_score(labels, rng.permutation(labels)) for _ in range(5)])
    assert chance_nmi(sizes) == pytest.approx(expected, rel=1e-9)
    assert 0.01 < chance_nmi(sizes) < 0.06  # far from 0 with ≈ 40 tiles a cluster
    assert chance_nmi(np.full(6, 5000)) < 0.002  # ≈ 0 with many


def test_run_page_of_a_small_run_gives_the_nmi_of_unrelated_labellings(synthetic):
    run_dir, truth = synthetic
    html = (run_dir / "report" / "index.html").read_text()
    sizes = np.bincount(truth["labels1"])
    assert f"{K * 10} tiles over {K} clusters is 10 per cluster" in html
    assert f"already score NMI ≈ {chance_nmi(np.sort(sizes)[::-1]):.3f}" in html


def test_crosstab_counts_and_orders_by_frequency():
    a = np.array([0, 0, 0, 1, 1, -1, 2])
    b = np.array([5, 5, 3, 4, -1, 5, 0])
    table = crosstab(a, b)
    assert table.top == {0: [(5, 2), (3, 1)], 1: [(4, 1)], 2: [(0, 1)]}
    assert table.distinct == {0: 2, 1: 1, 2: 1}


def test_slides_page_has_a_map_per_tiled_slide_and_the_failed_one(synthetic):
    run_dir, _ = synthetic
    page = (run_dir / "report" / "slides-0001.html").read_text()
    maps = re.findall(r'<img src="img/(slide-\d+\.png)"', page)
    assert maps == ["slide-0.png", "slide-1.png", "slide-2.png"]
    assert FAILED_SLIDE in page and FAILED_REASON in page
    index = (run_dir / "report" / "index.html").read_text()
    assert FAILED_REASON in index and "3 tiled, 1 failed" in index


def test_redrawing_replaces_the_report_whole(synthetic, tmp_path):
    run_dir, _ = synthetic
    build_report(run_dir, cfg=ReportConfig(cards_per_page=200))
    assert [p.name for p in (run_dir / "report").glob("atlas-*.html")] == ["atlas-0001.html"]
    assert not list(run_dir.glob(".report*"))
    build_report(run_dir, cfg=ReportConfig(cards_per_page=5, card_tiles=4, page_tiles=8, bins=3))


@pytest.mark.parametrize(
    "setup, args, message",
    [
        ("nothing", [], "run directory not found"),
        ("empty", [], "no tile store"),
        ("unclustered", [], "no clustered epoch"),
        ("synthetic", ["--epoch", "7"], "epoch 7: labels or features are missing"),
        ("synthetic", ["report.cards_per_page=0"], "cards_per_page must be ≥ 1"),
    ],
)
def test_bad_input_is_a_one_line_error_and_writes_nothing(synthetic, tmp_path, capsys, setup, args, message):
    run_dir = synthetic[0] if setup == "synthetic" else tmp_path / "run"
    if setup in ("empty", "unclustered"):
        run_dir.mkdir()
    if setup == "unclustered":
        make_clustered_run(run_dir, k=4, per_cluster=3, n_slides=1)
        for marker in run_dir.glob("labels/*/COMPLETE"):
            marker.unlink()
    before = sorted(p.name for p in (run_dir / "report").iterdir()) if (run_dir / "report").is_dir() else None
    assert launch(["report", str(run_dir), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    after = sorted(p.name for p in (run_dir / "report").iterdir()) if (run_dir / "report").is_dir() else None
    assert after == before
