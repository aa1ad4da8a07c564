"""The report as a person sees it: headless chromium (Debian's, driven over CDP) opens every page
of a synthetic run with known clusters and of a real demo run (the shipped slide plus an
unreadable one): no console errors or failed loads, no broken image, one card per cluster used,
one slide map per tiled slide, the failed slide with its reason, and a full-page screenshot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from browser_helpers import Browser

from dcssl.launch.demo import demo_slide
from dcssl.report import build_report
from dcssl.report.config import ReportConfig
from dcssl.report.synthetic import FAILED_REASON, FAILED_SLIDE, make_clustered_run
from dcssl.store import latest_attempts

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
CARDS = "document.querySelectorAll('.card').length"
SLIDES = (
    "({maps: document.querySelectorAll('.slide img').length,"
    " failed: [...document.querySelectorAll('.slide.failed')].map(e => e.innerText)})"
)


@pytest.fixture(scope="module")
def chromium() -> str:
    proc = subprocess.run(
        ["bash", str(REPO / ".ci" / "chromium-up.sh")], capture_output=True, text=True, timeout=900
    )
    if proc.returncode != 0:
        message = f".ci/chromium-up.sh failed:\n{proc.stdout}{proc.stderr}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return proc.stdout.strip().splitlines()[-1]


def _visit(browser: Browser, report: Path, shots: Path) -> dict:
    """Open every page; assert what must hold on each; return the cards and the slide pages."""
    found = {"cards": 0, "maps": 0, "failed": []}
    pages = sorted(report.glob("*.html")) + sorted((report / "clusters").glob("*.html"))
    for page in pages:
        result = browser.open(page, f"({{cards: {CARDS}, slides: {SLIDES}}})")
        assert result.errors == [], f"{page.name}: {result.errors}"
        broken = [src for src, width in result.images if width <= 0]
        assert result.images and not broken, f"{page.name}: broken images {broken}"
        probe = result.probe
        slides = probe["slides"]
        if page.name.startswith("atlas-"):
            found["cards"] += probe["cards"]
        if page.name.startswith("slides-"):
            found["maps"] += slides["maps"]
            found["failed"] += slides["failed"]
        if page.parent == report and page.stem in ("index", "atlas-0001", "slides-0001"):
            assert browser.screenshot(shots / f"{page.stem}.png").stat().st_size > 10_000
    return found


def test_synthetic_report_in_the_browser(chromium, tmp_path):
    run_dir = tmp_path / "run"
    make_clustered_run(run_dir, k=12, per_cluster=10, n_slides=3)
    build_report(run_dir, cfg=ReportConfig(cards_per_page=5))
    with Browser(chromium) as browser:
        found = _visit(browser, run_dir / "report", tmp_path)
    assert found["cards"] == 12
    assert found["maps"] == 3
    assert (
        len(found["failed"]) == 1
        and FAILED_SLIDE in found["failed"][0]
        and FAILED_REASON in found["failed"][0]
    )


@pytest.mark.slow
def test_demo_report_in_the_browser(chromium, tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    (slides / "cmu-1-small-region.svs").symlink_to(demo_slide())
    (slides / "unreadable.svs").symlink_to(DATA / "openslide-unreadable.svs")
    run_dir = tmp_path / "demo"
    cmd = [
        sys.executable,
        "-m",
        "dcssl.launch",
        "demo",
        "--out",
        str(run_dir),
        "--slides",
        str(slides),
        "loop.epochs=2",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    index = run_dir / "report" / "index.html"
    assert f"report   {index}" in proc.stdout
    stats = json.loads((run_dir / "labels" / "epoch-0002" / "stats.json").read_text())
    with Browser(chromium) as browser:
        found = _visit(browser, run_dir / "report", tmp_path)
    assert found["cards"] == stats["clusters_used"]
    assert found["maps"] == 1
    ledger = latest_attempts(run_dir / "store")["unreadable"]
    assert ledger["status"] == "failed"
    assert len(found["failed"]) == 1
    assert found["failed"][0].startswith("unreadable")
    assert f"failed at {ledger['stage']}: {ledger['reason']}" in found["failed"][0]
