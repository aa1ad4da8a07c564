"""DeepCluster-v2's classifier: the head starts as the clusters' centroids and may stay frozen."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from dcssl.epochs.features import open_bank
from dcssl.train.config import ModelConfig, OptimConfig
from dcssl.train.segment import checkpoint_manager, run_segment
from dcssl.train.synthetic import make_store, tiny_config, write_pseudo_labels
from dcssl.train.trainer import Trainer, cluster_centroids
from hpc.env import DistEnv
from hpc.preemption import Preempted, PreemptionFlag

N, BATCH, K = 64, 16, 4  # 61 labelled tiles (3 excluded): 3 steps an epoch


def _run(run_dir: Path, epoch: int, cfg, **kw) -> dict:
    return run_segment(run_dir, epoch, cfg, flag=kw.pop("flag", PreemptionFlag()), requeue=False, **kw)


def _cfg(frozen: float):
    cfg = tiny_config(batch_size=BATCH)
    cfg.model = replace(cfg.model, head_init="centroids")
    cfg.optim = replace(cfg.optim, head_frozen=frozen)
    return cfg


@pytest.fixture(scope="module")
def booted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("centroid-head")
    store = make_store(root / "store", n_shards=2, tiles_per_shard=N // 2, size=32)
    _run(root, 0, tiny_config(batch_size=BATCH))
    labels = store.labels().astype(np.int32) % K
    labels[:3] = -1  # excluded tiles take no part in a centroid
    write_pseudo_labels(root, 0, labels, K)
    return root


def _labels(run_dir: Path) -> np.ndarray:
    return np.fromfile(run_dir / "labels" / "epoch-0000" / "labels.i32", dtype=np.int32)


def _expected_centroids(run_dir: Path) -> torch.Tensor:
    bank, labels = np.asarray(open_bank(run_dir, 0), dtype=np.float64), _labels(run_dir)
    means = np.stack([bank[labels == c].mean(0) for c in range(K)])
    return torch.from_numpy(means / np.linalg.norm(means, axis=1, keepdims=True)).float()


def _head(run_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    state = checkpoint_manager(run_dir).load_latest()[1]["model"]
    return state["head.weight"], state["head.bias"]


def test_centroids_are_each_clusters_normalised_mean_embedding(booted):
    got = cluster_centroids(open_bank(booted, 0), _labels(booted), K + 1, block=5)
    assert torch.allclose(got[:K], _expected_centroids(booted), atol=1e-6)
    assert torch.equal(got[K], torch.zeros(got.shape[1]))  # an empty cluster: zeros


def test_the_head_starts_as_the_previous_epochs_centroids(booted):
    trainer = Trainer(booted, _cfg(0.0), DistEnv(), torch.device("cpu"), K)
    trainer.start_epoch(1, _labels(booted), K)
    assert torch.allclose(trainer.model.head.weight, _expected_centroids(booted), atol=1e-6)
    assert torch.equal(trainer.model.head.bias, torch.zeros(K))
    batch = next(iter(trainer.batches(1)))
    logits, z = trainer.model(trainer.inputs(batch))  # logits = cosine to the centroids / T
    assert torch.allclose(logits, z @ _expected_centroids(booted).T / 0.5, atol=1e-5)


def test_a_frozen_head_stays_the_centroids_while_the_trunk_trains(booted, tmp_path):
    run = tmp_path / "frozen"
    shutil.copytree(booted, run)
    before = checkpoint_manager(run).load_latest()[1]["model"]["trunk.conv1.weight"]
    _run(run, 1, _cfg(1.0))
    weight, bias = _head(run)
    assert torch.allclose(weight, _expected_centroids(booted), atol=1e-6) and not bias.any()
    after = checkpoint_manager(run).load_latest()[1]["model"]["trunk.conv1.weight"]
    assert not torch.equal(before, after)


def test_a_half_frozen_head_moves_after_half_the_epoch_and_resumes_exactly(booted, tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    for run in (whole, resumed):
        shutil.copytree(booted, run)
    assert _run(whole, 1, _cfg(0.5))["steps"] == 3  # 61 labelled tiles: steps 1-2 frozen, 3 trains
    weight, _ = _head(whole)
    assert not torch.allclose(weight, _expected_centroids(booted), atol=1e-4)
    flag = PreemptionFlag()
    with pytest.raises(Preempted):  # preempted inside the frozen half, resumed after it
        _run(resumed, 1, _cfg(0.5), flag=flag, on_step=lambda step: step == 1 and flag.set())
    assert torch.allclose(_head(resumed)[0], _expected_centroids(booted), atol=1e-6)
    _run(resumed, 1, _cfg(0.5))
    a, b = (checkpoint_manager(r).load_latest()[1]["model"] for r in (whole, resumed))
    assert all(torch.equal(a[key], b[key]) for key in a), "resume changed the weights"


def test_bad_values_are_refused_naming_the_field():
    with pytest.raises(ValueError, match="head_init must be 'random' or 'centroids'"):
        ModelConfig(head_init="kmeans")
    with pytest.raises(ValueError, match=r"head_frozen must lie in \[0, 1\]"):
        OptimConfig(head_frozen=1.5)
