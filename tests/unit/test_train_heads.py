"""Several clustering heads in training (cluster.extra_k) and the re-clustering cadence
(loop.recluster_every): one classifier per k with the right shapes, a loss that trains every
head, exact resume, and a segment on reused labels that keeps the head it had."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from dcssl.config import RunConfig, save_run_config
from dcssl.epochs.features import open_bank
from dcssl.epochs.labels import LabelsWriter, reuse_labels
from dcssl.epochs.trained import read_done
from dcssl.train.epoch_labels import load_extra_heads
from dcssl.train.segment import checkpoint_manager, run_segment
from dcssl.train.synthetic import make_store, tiny_config, write_pseudo_labels
from dcssl.train.trainer import Trainer, cluster_centroids
from hpc.env import DistEnv
from hpc.preemption import Preempted, PreemptionFlag

N, BATCH, KS = 64, 16, (4, 3, 6)  # primary k = 4, extra heads k = 3 and 6: 4 steps an epoch


def _run(run_dir: Path, epoch: int, cfg, **kw) -> dict:
    return run_segment(run_dir, epoch, cfg, flag=kw.pop("flag", PreemptionFlag()), requeue=False, **kw)


def _write_heads(run_dir: Path, epoch: int, labels: list[np.ndarray]) -> None:
    """Labels of ``epoch`` with extra heads, as the cluster job writes them (dcssl.epochs.labels)."""
    writer = LabelsWriter(run_dir, epoch, N, heads=len(labels) - 1)
    writer.begin()
    for head, head_labels in enumerate(labels):
        writer.write_rows(0, head_labels, head)
    ks = [int(lab.max()) + 1 for lab in labels]
    stats = {"k": ks[0], "n": N, "sizes": np.bincount(labels[0]).tolist(), "epoch": epoch}
    stats["heads"] = [{"k": k, "sizes": np.bincount(lab).tolist()} for k, lab in zip(ks[1:], labels[1:])]
    writer.publish(np.zeros((ks[0], 1), np.float32), stats, [np.zeros((k, 1), np.float32) for k in ks[1:]])


@pytest.fixture(scope="module")
def booted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("heads")
    store = make_store(root / "store", n_shards=2, tiles_per_shard=N // 2, size=32)
    _run(root, 0, tiny_config(batch_size=BATCH))
    truth = store.labels().astype(np.int32)
    _write_heads(root, 0, [(truth + h) % k for h, k in enumerate(KS)])
    return root


def _model(run_dir: Path) -> dict:
    return checkpoint_manager(run_dir).load_latest()[1]["model"]


def test_one_head_per_k_with_the_right_shapes_and_the_loss_trains_every_head(booted):
    trainer = Trainer(booted, tiny_config(batch_size=BATCH), DistEnv(), torch.device("cpu"), KS[0])
    trainer.start_epoch(1, np.fromfile(booted / "labels/epoch-0000/labels.i32", dtype="<i4"), KS[0])
    assert trainer.model.k == KS[0] and trainer.model.extra_k == list(KS[1:])
    assert [tuple(h.weight.shape) for h in trainer.model.extra_heads] == [(k, 32) for k in KS[1:]]
    batch = next(iter(trainer.batches(1)))
    logits, _ = trainer.model(trainer.inputs(batch))
    assert logits.shape == (BATCH, sum(KS))
    before = [
        p.detach().clone()
        for p in (trainer.model.head.weight, *(h.weight for h in trainer.model.extra_heads))
    ]
    out = trainer.train_step(batch)
    after = [trainer.model.head.weight, *(h.weight for h in trainer.model.extra_heads)]
    assert all(not torch.equal(b, a) for b, a in zip(before, after)), "a head got no gradient"
    assert torch.isfinite(out.loss)


def test_the_loss_is_the_mean_of_the_heads_cross_entropies(booted):
    trainer = Trainer(booted, tiny_config(batch_size=BATCH), DistEnv(), torch.device("cpu"), KS[0])
    trainer.start_epoch(1, np.fromfile(booted / "labels/epoch-0000/labels.i32", dtype="<i4"), KS[0])
    logits = torch.randn(2 * 5, sum(KS))  # 2 views of 5 tiles
    targets = [torch.randint(0, k, (5,)) for k in KS]
    parts = torch.split(logits, list(KS), dim=1)
    expected = sum(torch.nn.functional.cross_entropy(p, t.repeat(2)) for p, t in zip(parts, targets)) / 3
    assert torch.allclose(trainer._loss(logits, targets, 2), expected)


def test_a_preempted_multi_head_segment_resumes_bit_identically(booted, tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    for run in (whole, resumed):
        shutil.copytree(booted, run)
    cfg = tiny_config(batch_size=BATCH)
    _run(whole, 1, cfg)
    flag = PreemptionFlag()
    with pytest.raises(Preempted):
        _run(resumed, 1, cfg, flag=flag, on_step=lambda step: step == 2 and flag.set())
    _run(resumed, 1, cfg)
    a, b = _model(whole), _model(resumed)
    assert {key for key in a if key.startswith("extra_heads.")} == {
        f"extra_heads.{i}.{p}" for i in range(2) for p in ("weight", "bias")
    }
    assert all(torch.equal(a[key], b[key]) for key in a), "resume changed the weights"


def test_centroid_heads_start_as_each_heads_centroids(booted):
    cfg = tiny_config(batch_size=BATCH)
    cfg.model = replace(cfg.model, head_init="centroids")
    trainer = Trainer(booted, cfg, DistEnv(), torch.device("cpu"), KS[0])
    trainer.start_epoch(1, np.fromfile(booted / "labels/epoch-0000/labels.i32", dtype="<i4"), KS[0])
    bank = open_bank(booted, 0)
    for head, (labels, k) in enumerate(load_extra_heads(booted, 0, N), 1):
        expected = cluster_centroids(bank, labels, k)
        filled = expected.abs().sum(1) > 0  # an empty cluster keeps its random row
        assert filled.sum() >= 3
        assert torch.allclose(trainer.model.extra_heads[head - 1].weight[filled], expected[filled], atol=1e-6)


def _two_segments(tmp_path: Path, reuse: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Heads after segment 1 and after segment 2, whose head is frozen (so it shows how it began)
    and whose labels are epoch 0's again: reused (recluster_every=2) or written as a new clustering."""
    run = tmp_path / ("reused" if reuse else "reclustered")
    run.mkdir()
    labels = make_store(run / "store", n_shards=2, tiles_per_shard=N // 2, size=32).labels() % KS[0]
    cfg = tiny_config(batch_size=BATCH)
    _run(run, 0, cfg)
    write_pseudo_labels(run, 0, labels, KS[0])
    _run(run, 1, cfg)
    trained = _model(run)["head.weight"].clone()
    if reuse:
        reuse_labels(run, 1, 0)  # what the cluster stage writes for epoch 1 at recluster_every=2
    else:
        write_pseudo_labels(run, 1, labels, KS[0])
    _run(run, 2, replace(cfg, optim=replace(cfg.optim, head_frozen=1.0)))
    return trained, _model(run)["head.weight"]


def test_a_segment_on_reused_labels_keeps_the_head_instead_of_resetting_it(tmp_path):
    trained, after = _two_segments(tmp_path, reuse=True)
    assert torch.equal(after, trained), "the head was reset on reused labels"
    trained, after = _two_segments(tmp_path, reuse=False)
    assert not torch.allclose(after, trained), "a new clustering must reset the head"


def test_recluster_every_is_validated_naming_the_key():
    from dcssl.runconfig import LoopConfig

    with pytest.raises(ValueError, match="recluster_every must be ≥ 1"):
        LoopConfig(recluster_every=0)


def test_two_ddp_ranks_train_every_head(booted, tmp_path):
    """torchrun, 2 gloo ranks: one forward carries every head, so DDP syncs them all."""
    run = tmp_path / "ddp"
    shutil.copytree(booted, run)
    save_run_config(run, RunConfig(train=tiny_config(batch_size=8)))
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        + ["-m", "dcssl.train", str(run), "--epoch", "1"],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = read_done(run, 1)
    assert done["world_size"] == 2 and done["complete"] and np.isfinite(done["loss"])
    state = checkpoint_manager(run).load_latest()[1]
    assert state["extra_k"] == list(KS[1:])
    assert [tuple(state["model"][f"extra_heads.{i}.weight"].shape) for i in range(2)] == [
        (k, 32) for k in KS[1:]
    ]
