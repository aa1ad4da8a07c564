"""The tile stage over a run directory: launch (local executor), status, re-runs, kill -9, ingest."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import pytest
import yaml

from dcssl.launch.__main__ import main as launch
from dcssl.slides.synthetic import Rect, write_slide
from dcssl.store import Store, read_ledger, shard_name

DATA = Path(__file__).resolve().parents[1] / "data"
REPO = Path(__file__).resolve().parents[2]
WEIRD = "case 7 'left'; rm -rf x"


@pytest.fixture(scope="module")
def slide_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("slides")
    for name in (
        "cmu-1-small-region.svs",
        "openslide-unopenable.tiff",
        "openslide-unreadable.svs",
        "kidney-48-5.tif",
    ):
        shutil.copy(DATA / name, folder / name)
    shutil.copy(DATA / "cmu-1-small-region.svs", folder / f"{WEIRD}.svs")
    (folder / "not-a-slide.svs").write_text("this is a text file\n")
    return folder


def _status(run: Path, capsys) -> dict:
    capsys.readouterr()
    assert launch(["status", str(run), "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_local_run_with_bad_slides_then_rerun(slide_folder, tmp_path, capsys):
    run = tmp_path / "run"
    code = launch(
        [
            "tile",
            str(run),
            "--slides",
            str(slide_folder),
            "--executor",
            "local",
            "executor_tile.array_parallelism=2",
            "tile.workers=1",
        ]
    )
    assert code == 1
    status = _status(run, capsys)
    assert (status["slides"], status["done"], status["pending"], status["tiles"]) == (6, 2, 0, 88)
    failed = {f["slide"]: f for f in status["failed"]}
    assert set(failed) == {"openslide-unopenable", "openslide-unreadable", "kidney-48-5", "not-a-slide"}
    assert failed["openslide-unreadable"]["stage"] == "tissue"
    assert "not a slide format" in failed["not-a-slide"]["reason"]
    shards = run / "store" / "shards"
    assert (shards / shard_name(WEIRD)).is_file() and ";" not in shard_name(WEIRD)
    store = Store(run / "store")
    assert [s.slide_id for s in store.shards] == [WEIRD, "cmu-1-small-region"]  # slide-list order
    assert store.n_tiles == 88
    # the array elements read the pinned settings
    pinned = yaml.safe_load((run / "config.yaml").read_text())
    assert pinned["tile"]["workers"] == 1 and pinned["executor_tile"]["array_parallelism"] == 2
    # re-run: done shards are skipped, only the four failures are attempted again
    before = len(read_ledger(run / "store"))
    mtime = (shards / "cmu-1-small-region.h5").stat().st_mtime_ns
    assert launch(["tile", str(run), "tile.workers=1"]) == 1
    retried = [r["slide"] for r in read_ledger(run / "store")[before:]]
    assert sorted(retried) == sorted(failed)
    assert (shards / "cmu-1-small-region.h5").stat().st_mtime_ns == mtime


def test_human_status_and_usage_errors(slide_folder, tmp_path, capsys):
    run = tmp_path / "run"
    assert launch(["tile", str(run), "--slides", str(tmp_path / "missing"), "tile.workers=1"]) == 2
    assert "no such folder, file or glob" in capsys.readouterr().err
    assert launch(["tile", str(run), "--slides", str(slide_folder), "tile.bogus=1"]) == 2
    assert "tile.bogus: unknown key" in capsys.readouterr().err
    assert launch(["status", str(tmp_path / "nowhere")]) == 2


def _big_slide(folder: Path) -> Path:
    step = 448  # 40× scan: 30×16 tiles all tissue, read at level 1 → ~480 tiles, ~1-3 s
    return write_slide(
        folder / "big.tif",
        30 * step,
        16 * step,
        [Rect(0, 0, 30 * step, 16 * step)],
        mpp=0.25,
        downsamples=(1, 2, 16),
    )


def test_kill_9_mid_slide_leaves_no_shard_and_rerun_completes(tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    _big_slide(slides)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    prep = subprocess.run(
        [
            sys.executable,
            "-m",
            "dcssl.tile",
            str(run),
            "--prepare",
            str(slides),
            "tile.workers=1",
            "tile.block_tiles=2",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert prep.returncode == 0 and prep.stdout.strip() == "1", prep.stderr
    shards = run / "store" / "shards"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dcssl.tile", str(run), "--index", "0", "tile.block_tiles=2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not list(shards.glob(".big.h5.*.tmp")):  # the shard is being written
        assert proc.poll() is None, "the element ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    time.sleep(0.3)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (shards / "big.h5").exists() and list(shards.glob(".big.h5.*.tmp"))
    assert not (run / "store" / "manifest.json").exists()
    done = subprocess.run(
        [sys.executable, "-m", "dcssl.tile", str(run), "--index", "0", "tile.block_tiles=2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert not list(shards.glob("*.tmp"))  # the stale temp file was cleaned
    with h5py.File(shards / "big.h5") as f:
        assert f["coords"].shape == (480, 2) and f.attrs["n_tiles"] == 480
    assert not (run / "store" / "manifest.json").exists()  # the job after the array writes it
    final = subprocess.run(
        [sys.executable, "-m", "dcssl.tile", str(run), "--finalize"],
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert final.returncode == 0, final.stderr
    assert Store(run / "store").n_tiles == 480


def test_ingest_labelled_folders_and_prefixes(tmp_path, capsys):
    run = tmp_path / "run"
    tiles = DATA / "labelled_tiles"
    assert launch(["ingest", str(run), "--tiles", str(tiles / "kather2016")]) == 0
    assert launch(["ingest", str(run), "--tiles", str(tiles / "nct_crc_he"), "--labels", "prefix"]) == 0
    store = Store(run / "store")
    assert store.n_tiles == 33
    labels = store.labels()
    assert labels[:24].tolist() == [c for c in range(8) for _ in range(3)]
    assert labels[24:].tolist() == list(range(9))
    assert store.read_tile(0).shape == (224, 224, 3)
    with h5py.File(store.shard_path(1)) as f:
        assert json.loads(f.attrs["classes"])[-1] == "TUM"
    before = len(read_ledger(run / "store"))  # a re-run writes nothing new
    assert launch(["ingest", str(run), "--tiles", str(tiles / "kather2016")]) == 0
    assert len(read_ledger(run / "store")) == before
    assert launch(["ingest", str(run), "--tiles", str(tmp_path / "nope")]) == 2


def test_elements_record_only_their_slide_and_status_builds_the_manifest_once(tmp_path, capsys):
    from dcssl.config import load_run_config
    from dcssl.tile.prepare import prepare_run
    from dcssl.tile.run import finalize, tile_element

    folder = tmp_path / "slides"
    folder.mkdir()
    for i in range(6):  # tiny slides: one tissue block each
        write_slide(folder / f"s{i}.tif", 1024, 768, [Rect(128 + 32 * i, 128, 512, 384)], tile=256)
    (folder / "s9-bad.svs").write_text("not a slide\n")
    run = tmp_path / "run"
    refs = prepare_run(run, str(folder), load_run_config(run, None, ["tile.workers=1"]))
    for index in range(len(refs)):  # what every array element runs, the last one included
        tile_element(run, index, None, ["tile.workers=1"])
    assert not (run / "store" / "manifest.json").exists()  # no element finalizes
    status = _status(run, capsys)  # every slide attempted: status writes the manifest
    assert (status["pending"], status["done"], len(status["failed"])) == (0, 6, 1)
    written = (run / "store" / "manifest.json").read_text()
    assert status["manifest"] and json.loads(written)["n_tiles"] == status["tiles"] > 0
    stamp = (run / "store" / "manifest.json").stat().st_mtime_ns
    _status(run, capsys)  # nothing changed since: not rewritten
    assert (run / "store" / "manifest.json").stat().st_mtime_ns == stamp
    finalize(run)  # the builder the finalize job runs: the same manifest
    assert (run / "store" / "manifest.json").read_text() == written
    order = [s["slide_id"] for s in json.loads(written)["shards"]]
    assert order == [f"s{i}" for i in range(6)]
