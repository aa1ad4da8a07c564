"""The 33 real labelled H&E tiles end to end: ingest → bootstrap → cluster → one training epoch →
``launch eval`` (table, eval.json, last-line JSON) → ``launch embed`` (HDF5 by global index,
resumable, kept on re-run) → ``launch curate`` on the real clustering."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from dcssl.cluster.config import ClusterConfig
from dcssl.cluster.job import run_cluster
from dcssl.evaluate.encoder import FrozenEncoder, trained_encoder
from dcssl.evaluate.features import preprocess
from dcssl.launch.__main__ import main as launch
from dcssl.store import Store
from dcssl.tile.config import TileConfig
from dcssl.tile.ingest import ingest_folder
from dcssl.train.segment import run_segment
from dcssl.train.synthetic import tiny_config
from hpc.config import to_dict
from hpc.preemption import PreemptionFlag

TILES = Path(__file__).resolve().parents[1] / "data" / "labelled_tiles"
CFG = tiny_config(size=32, batch_size=8)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("e2e")
    ingest = TileConfig(tile_size=64)
    ingest_folder(TILES / "kather2016", root / "run" / "store", ingest, labels="folders")
    ingest_folder(TILES / "nct_crc_he", root / "run" / "store", ingest, labels="prefix")
    ingest_folder(TILES / "kather2016", root / "kather", ingest, labels="folders")
    run_dir = root / "run"
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"train": to_dict(CFG)}))
    cluster = ClusterConfig(k=4, pca_dim=8, iterations=10, init_trials=2, block_rows=1024)
    for epoch in (0, 1):
        run_segment(run_dir, epoch, CFG, flag=PreemptionFlag(), requeue=False)
        run_cluster(run_dir, epoch, cluster)
    return run_dir


def test_store_holds_all_33_tiles(run):
    assert len(Store(run / "store")) == 33


def test_eval_cli_prints_the_table_and_a_json_line(run, capsys):
    assert (
        launch(["eval", str(run), "--data", str(run.parent / "kather"), "eval.linear_weight_decays=[0.01]"])
        == 0
    )
    out = capsys.readouterr().out.strip().splitlines()
    last = json.loads(out[-1])
    for key in ("knn_pretrained", "knn_random", "linear_pretrained", "linear_random", "knn_raw_pixels"):
        assert 0.0 <= last[key] <= 1.0
    assert last["fraction"] == 1.0 and last["n_reference"] == 16 and last["n_queries"] == 8
    assert last["checkpoint_epoch"] == 1
    assert any(line.startswith("pretrained") and "100%" in line for line in out)
    saved = json.loads((run / "eval" / "eval.json").read_text())
    assert len(saved["rows"]) == 3 * 3  # pretrained, random, raw pixels × 1 %, 10 %, 100 %
    assert {r["n_labels"] for r in saved["rows"] if r["fraction"] == 0.01} == {8}  # 1 per class


def test_eval_on_24_tiles_says_they_cannot_rank_the_encoders(run, capsys):
    """8 queries: chance, each row's interval, the paired count and the caveat, on screen and saved."""
    assert (
        launch(["eval", str(run), "--data", str(run.parent / "kather"), "eval.linear_weight_decays=[0.01]"])
        == 0
    )
    out = capsys.readouterr().out
    last = json.loads(out.strip().splitlines()[-1])
    assert last["chance"] == 0.125  # 8 classes, one query each
    assert last["caveat"].startswith("caveat: 8 queries (1 per class)") and last["caveat"] in out
    assert "k = 20 ≥ 16 references, so every reference votes" in out
    saved = json.loads((run / "eval" / "eval.json").read_text())
    for row in saved["rows"]:
        assert row["knn_correct"] == round(row["knn"] * 8)
        low, high = row["knn_ci95"]
        assert low <= row["knn"] <= high and high - low > 0.4  # 8 queries: wide intervals
    top = {r["encoder"]: r["knn_correct"] for r in saved["rows"] if r["fraction"] == 1.0}
    # the discordant queries account exactly for the gap between the two encoders
    assert (
        last["knn_only_pretrained_right"] - last["knn_only_random_right"] == top["pretrained"] - top["random"]
    )
    assert 0.0 <= last["knn_sign_test_p"] <= 1.0


def test_eval_of_unlabelled_or_missing_data_is_a_one_line_error(run, capsys):
    assert launch(["eval", str(run), "--data", str(run / "nope.npz")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nope.npz" in err and len(err.strip().splitlines()) == 1
    assert launch(["eval", str(run), "--data", str(run / "store"), "--fractions", "0,2"]) == 2


def test_embed_writes_features_by_global_index_and_keeps_them_on_rerun(run, capsys):
    assert launch(["embed", str(run)]) == 0
    out = run / "embed" / "features.h5"
    store = Store(run / "store")
    encoder = FrozenEncoder(trained_encoder(run, CFG).net)
    with h5py.File(out, "r") as f:
        assert f["features"].shape == (33, encoder.net.trunk.out_dim)
        np.testing.assert_array_equal(f["shard_offsets"][:], store.offsets)
        assert [s.decode() for s in f["slide_ids"][:]] == [s.slide_id for s in store.shards]
        rows = np.array([0, 17, 32])
        expected = encoder(preprocess([store.read_tile(int(i)) for i in rows], CFG.augment, 32))
        np.testing.assert_allclose(f["features"][rows], expected.numpy(), rtol=1e-4, atol=1e-5)
    stamp = out.stat().st_mtime_ns
    capsys.readouterr()
    assert launch(["embed", str(run)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["skipped"] is True
    assert out.stat().st_mtime_ns == stamp


def test_embed_resumes_a_partial_file_at_its_first_unfinished_chunk(run, tmp_path):
    out = tmp_path / "f.h5"
    assert launch(["embed", str(run), "--out", str(out), "embed.chunk_tiles=10"]) == 0
    with h5py.File(out, "r") as f:
        whole = f["features"][:]
    # a crash after two chunks: the partial file says 20 tiles are done, rows past it are junk
    partial = out.with_name(f".{out.name}.partial")
    out.rename(partial)
    with h5py.File(partial, "a") as f:
        f.attrs["tiles_done"] = 20
        f["features"][20:] = 0
    assert launch(["embed", str(run), "--out", str(out), "embed.chunk_tiles=10"]) == 0
    assert not partial.exists()
    with h5py.File(out, "r") as f:
        np.testing.assert_allclose(f["features"][:], whole, rtol=1e-5, atol=1e-6)


def test_curate_on_the_real_clustering(run, capsys):
    assert launch(["curate", str(run), "curate.per_cluster=3", "curate.bins=3"]) == 0
    document = json.loads((run / "curated" / "manifest.json").read_text())
    labels = np.fromfile(run / "labels" / "epoch-0001" / "labels.i32", dtype=np.int32)
    sizes = np.bincount(labels)
    assert [c["picked"] for c in document["clusters"]] == [min(3, s) for s in sizes if s]
    curated = Store(run / "curated" / "store")
    source = Store(run / "store")
    chosen = np.load(run / "curated" / "selection.npz")["source_index"]
    assert len(curated) == document["n_tiles"] == len(chosen)
    for j in (0, len(chosen) - 1):
        np.testing.assert_array_equal(curated.read_tile(j), source.read_tile(int(chosen[j])))
