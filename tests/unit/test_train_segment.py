"""Training segments in one process: bootstrap, an epoch with its feature bank, exact resume after
a preemption or a step budget, NaN stop, extraction source, k changing, bad input, the CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dcssl.epochs.features import open_bank, read_meta
from dcssl.jsonl import read_jsonl
from dcssl.store import Store
from dcssl.train.data import make_loader
from dcssl.train.sampler import UniformClusterSampler
from dcssl.train.segment import NonFiniteLoss, SegmentError, checkpoint_manager, done_path, run_segment
from dcssl.train.synthetic import make_store, tiny_config, write_pseudo_labels
from dcssl.train.trainer import Trainer
from hpc.env import DistEnv
from hpc.preemption import Preempted, PreemptionFlag

N, BATCH = 96, 16


def _cfg(**top):
    return tiny_config(batch_size=BATCH, checkpoint_every=3, log_every=2, **top)


def _run(run_dir: Path, epoch: int, cfg=None, **kw) -> dict:
    return run_segment(
        run_dir, epoch, cfg or _cfg(), flag=kw.pop("flag", PreemptionFlag()), requeue=False, **kw
    )


@pytest.fixture(scope="module")
def booted(tmp_path_factory) -> Path:
    """A run directory after the bootstrap, with epoch-0 labels = the stored classes."""
    root = tmp_path_factory.mktemp("booted")
    store = make_store(root / "store", n_shards=2, tiles_per_shard=N // 2, size=32)
    _run(root, 0)
    write_pseudo_labels(root, 0, store.labels(), 4)
    return root


@pytest.fixture(scope="module")
def trained(booted, tmp_path_factory) -> tuple[Path, dict]:
    """The reference: epoch 1 uninterrupted."""
    root = tmp_path_factory.mktemp("trained") / "run"
    shutil.copytree(booted, root)
    return root, _run(root, 1)


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(src, dst)
    return dst


def _final_model(run_dir: Path) -> dict:
    return checkpoint_manager(run_dir).load_latest()[1]["model"]


def _assert_same_weights(a: Path, b: Path) -> None:
    ma, mb = _final_model(a), _final_model(b)
    assert list(ma) == list(mb)
    assert all(torch.equal(ma[k], mb[k]) for k in ma), "weights differ"


def _eval_embeddings(run_dir: Path) -> np.ndarray:
    """Every tile's eval-mode embedding under the newest checkpoint, computed here directly."""
    trainer = Trainer(run_dir, _cfg(), DistEnv(), torch.device("cpu"), k=1)
    trainer.load_state_dict(checkpoint_manager(run_dir).load_latest()[1])
    loader = make_loader(trainer.dataset, batch_sampler=[list(range(0, N, 40)) + list(range(1, N, 40))])
    del loader  # batch composition does not matter in eval mode: embed all at once
    batch = trainer.dataset.__getitems__(list(range(N)))
    return trainer.embed(batch).numpy()


def test_bootstrap_embeds_every_tile_with_the_initial_weights(booted):
    meta = read_meta(booted, 0)
    assert meta == {
        "n": N,
        "dim": 32,
        "dtype": "float16",
        "epoch": 0,
        "source": "extract",
        "stale_fraction": 0.0,
    }
    bank = np.asarray(open_bank(booted, 0), dtype=np.float32)
    assert np.allclose(np.linalg.norm(bank, axis=1), 1.0, atol=2e-3)
    assert np.allclose(bank, _eval_embeddings(booted), atol=2e-3)
    assert checkpoint_manager(booted).steps() == [0]  # epoch 1 starts from exactly these weights
    before = (booted / "features" / "epoch-0000" / "embeddings.f16").stat().st_mtime_ns
    again = _run(booted, 0)  # a finished segment is a no-op
    assert again == json.loads(done_path(booted, 0).read_text())
    assert (booted / "features" / "epoch-0000" / "embeddings.f16").stat().st_mtime_ns == before


def test_epoch_trains_and_records_the_features_of_the_tiles_it_saw(booted, trained):
    run_dir, summary = trained
    assert summary["complete"] and summary["steps"] == N // BATCH and summary["k"] == 4
    records = read_jsonl(run_dir / "metrics.jsonl")
    windows = [r for r in records if r["kind"] == "train_window" and r["epoch"] == 1]
    assert [w["step"] for w in windows] == [2, 4, 6]
    assert all(w["images_per_s"] > 0 and w["lr"] == 0.05 for w in windows)
    epochs = [r for r in records if r["kind"] == "train_epoch" and r["epoch"] == 1]
    assert len(epochs) == 1 and epochs[0]["steps"] == N // BATCH

    sampler = UniformClusterSampler(Store(run_dir / "store").labels().astype(np.int32), seed=0)
    sampler.set_epoch(1)
    # the rows written: the owner draws (see sampler) of the consumed prefix
    visited = sorted({t for t, _, owner in list(sampler)[: summary["steps"] * BATCH] if owner})
    stale = np.setdiff1d(np.arange(N), visited)
    assert summary["stale_fraction"] == pytest.approx(len(stale) / N)
    assert summary["bank_rows_written_this_job"] == len(visited)
    assert read_meta(run_dir, 1)["stale_fraction"] == pytest.approx(len(stale) / N, abs=1e-6)
    new, old = open_bank(run_dir, 1), open_bank(booted, 0)
    assert np.array_equal(new[stale], old[stale])  # unvisited tiles keep their last embedding
    assert not np.isclose(new[visited], old[visited], atol=1e-3).all(axis=1).any()
    assert np.allclose(np.linalg.norm(new[visited].astype(np.float32), axis=1), 1.0, atol=2e-3)


def test_preempted_at_step_k_resumes_to_the_same_weights(booted, trained, tmp_path):
    run_dir = _copy(booted, tmp_path)
    flag = PreemptionFlag()

    def preempt(step: int) -> None:
        if step == 4:
            flag.set()  # what the USR2 handler does

    with pytest.raises(Preempted):
        _run(run_dir, 1, flag=flag, on_step=preempt)
    assert checkpoint_manager(run_dir).steps() == [3, 4]  # periodic one and the preemption one
    assert not done_path(run_dir, 1).exists()
    summary = _run(run_dir, 1)
    assert summary["steps"] == N // BATCH and summary["global_step"] == trained[1]["global_step"]
    assert summary["loss"] == pytest.approx(trained[1]["loss"], rel=1e-6)
    _assert_same_weights(run_dir, trained[0])
    assert np.array_equal(open_bank(run_dir, 1), open_bank(trained[0], 1))


def test_step_budget_splits_an_epoch_across_jobs(booted, trained, tmp_path):
    run_dir = _copy(booted, tmp_path)
    first = _run(run_dir, 1, _cfg(max_steps=4))
    assert first["complete"] is False and first["steps"] == 4
    assert not done_path(run_dir, 1).exists()
    second = _run(run_dir, 1, _cfg(max_steps=4))
    assert second["complete"] is True and second["steps"] == N // BATCH
    _assert_same_weights(run_dir, trained[0])


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(booted, tmp_path):
    run_dir = _copy(booted, tmp_path)
    ckpt = checkpoint_manager(run_dir)
    before = ckpt.path_for(0).read_bytes()
    cfg = _cfg()
    cfg.optim.lr, cfg.checkpoint_every = 1e30, 1000
    with pytest.raises(NonFiniteLoss, match=r"loss is (nan|inf).*train-000000000\.pt.*optim\.lr"):
        _run(run_dir, 1, cfg)
    assert ckpt.steps() == [0] and ckpt.path_for(0).read_bytes() == before
    assert not done_path(run_dir, 1).exists()


def test_extract_source_is_an_eval_pass_over_all_tiles(booted, tmp_path):
    run_dir = _copy(booted, tmp_path)
    summary = _run(run_dir, 1, _cfg(feature_source="extract"))
    assert summary["stale_fraction"] == 0.0 and summary["bank_rows_written_this_job"] == N
    assert read_meta(run_dir, 1)["source"] == "extract"
    bank = np.asarray(open_bank(run_dir, 1), dtype=np.float32)
    assert np.allclose(bank, _eval_embeddings(run_dir), atol=2e-3)


def test_k_may_change_from_epoch_to_epoch(booted, tmp_path):
    run_dir = _copy(booted, tmp_path)
    _run(run_dir, 1)
    rng = np.random.default_rng(0)
    write_pseudo_labels(run_dir, 1, rng.integers(0, 7, N), 7)  # more clusters: the head grows
    assert _run(run_dir, 2)["k"] == 7
    labels = rng.integers(0, 2, N)
    labels[:10] = -1  # unassigned tiles are never trained on
    write_pseudo_labels(run_dir, 2, labels, 2)  # fewer: rows are masked
    summary = _run(run_dir, 3)
    assert summary["k"] == 2 and summary["steps"] == (N - 10) // BATCH
    state = checkpoint_manager(run_dir).load_latest()[1]
    assert state["head_rows"] == 7 and state["k"] == 2 and state["epoch"] == 3
    assert state["model"]["head.weight"].shape == (7, 32)


def test_bad_input_is_named_with_its_fix(booted, tmp_path):
    run_dir = _copy(booted, tmp_path)
    with pytest.raises(SegmentError, match="labels of epoch 1 are not complete.*cluster job"):
        _run(run_dir, 2)
    wrong = run_dir / "labels" / "epoch-0000" / "labels.i32"
    wrong.write_bytes(np.zeros(5, dtype=np.int32).tobytes())
    with pytest.raises(SegmentError, match="holds 5 labels, the store has 96 tiles"):
        _run(run_dir, 1)
    write_pseudo_labels(run_dir, 1, np.arange(N) % 2, 2)  # two labels: one would be refused first
    with pytest.raises(SegmentError, match="segment 0 has not finished|features of epoch 1"):
        _run(run_dir, 2)
    with pytest.raises(SegmentError, match="no tile store"):
        _run(tmp_path / "empty", 1)


def _cli(*args: str) -> subprocess.CompletedProcess:
    # no SLURM variables: inside an allocation a step budget would requeue the caller's job
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run(
        [sys.executable, "-m", "dcssl.train", *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_cli_runs_a_segment_and_rejects_bad_config(booted, tmp_path):
    run_dir = _copy(booted, tmp_path)
    (run_dir / "config.yaml").write_text(
        json.dumps(
            {
                "train": {
                    "model": {"arch": "resnet18", "width": 8, "proj_dim": 32, "temperature": 0.5},
                    "data": {"batch_size": BATCH, "workers": 0},
                    "augment": {"size": 32, "color": "none"},
                    "log_every": 2,
                }
            }
        )
    )
    bad = _cli(str(run_dir), "--epoch", "1", "train.optim.lrr=1")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: train.optim.lrr: unknown key")
    good = _cli(str(run_dir), "--epoch", "1", "train.max_steps=2")
    assert good.returncode == 0, good.stderr
    summary = json.loads(good.stdout.strip().splitlines()[-1])
    assert summary["complete"] is False and summary["steps"] == 2
    assert "epoch 1 step 2/6" in good.stderr  # progress with rate and ETA
    missing = _cli(str(run_dir), "--epoch", "3")
    assert missing.returncode == 2 and "error: " in missing.stderr
