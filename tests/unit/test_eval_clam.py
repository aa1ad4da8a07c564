"""``launch embed --layout clam``: one features/<slide>.h5 per slide, read back with plain h5py."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from dcssl.evaluate.encoder import FrozenEncoder, trained_encoder
from dcssl.launch.__main__ import main as launch
from dcssl.store import Store
from dcssl.train.segment import run_segment
from dcssl.train.synthetic import make_store, tiny_config
from hpc.config import to_dict
from hpc.preemption import PreemptionFlag

CFG = tiny_config(size=32, batch_size=8)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("clam") / "run"
    store = make_store(run_dir / "store", n_shards=3, tiles_per_shard=10, size=32)
    with h5py.File(run_dir / "store" / "shards" / "slide-001.h5", "a") as f:
        f["coords"][:, 1] = 7 * np.arange(10)  # distinct coordinates per slide
    assert len(store) == 30
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"train": to_dict(CFG)}))
    run_segment(run_dir, 0, CFG, flag=PreemptionFlag(), requeue=False)  # the step-0 checkpoint
    return run_dir


def test_clam_layout_round_trips_through_plain_h5py(run, capsys):
    assert launch(["embed", str(run), "--layout", "clam"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["slides_written"] == 3 and summary["slides_kept"] == 0
    folder = run / "embed" / "features"
    assert sorted(p.name for p in folder.iterdir()) == ["slide-000.h5", "slide-001.h5", "slide-002.h5"]
    store = Store(run / "store")
    encoder = FrozenEncoder(trained_encoder(run, CFG).net)
    with h5py.File(run / "embed" / "features.h5", "r") as whole:
        every = whole["features"][:]
    for i, info in enumerate(store.shards):
        with h5py.File(folder / f"{info.slide_id}.h5", "r") as f:
            assert set(f.keys()) == {"features", "coords"}
            assert f["features"].shape == (10, encoder.net.trunk.out_dim)
            assert f["coords"].dtype == np.int64
            with store.open_shard(i) as shard:
                assert np.array_equal(f["coords"][:], shard["coords"][:])
            assert np.array_equal(f["features"][:], every[info.offset : info.offset + info.n_tiles])
            assert f.attrs["slide_id"] == info.slide_id
    assert not np.array_equal(every[:10], every[10:20])


def test_clam_layout_is_kept_on_rerun(run, capsys):
    folder = run / "embed" / "features"
    assert launch(["embed", str(run), "--layout", "clam"]) == 0
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert launch(["embed", str(run), "--layout", "clam"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["slides_kept"] == 3 and summary["slides_written"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_unknown_layout_is_a_usage_error(run, capsys):
    assert launch(["embed", str(run), "--layout", "trident"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "invalid choice: 'trident'" in err[0]
