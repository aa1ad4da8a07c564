"""Excluding an artefact cluster: the next train segments (through a preemption and its resume)
never draw its tiles, the cluster job labels them -1, and --undo brings them back — with the real
train segment and the real cluster job on a small synthetic store."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from dcssl.cluster.config import ClusterConfig
from dcssl.cluster.job import run_cluster
from dcssl.epochs.features import open_bank
from dcssl.epochs.labels import read_labels
from dcssl.exclusion import read_mask
from dcssl.jsonl import append_jsonl, read_jsonl
from dcssl.launch.__main__ import main as launch
from dcssl.train.segment import load_labels, run_segment
from dcssl.train.synthetic import make_store, tiny_config
from hpc.preemption import Preempted, PreemptionFlag

N = 96
CLUSTER = ClusterConfig(k=4, pca_dim=8, iterations=10, init_trials=2, block_rows=32)


def _train(run_dir, epoch, **kw):
    cfg = tiny_config(batch_size=16, checkpoint_every=100, log_every=2)
    return run_segment(run_dir, epoch, cfg, flag=kw.pop("flag", PreemptionFlag()), requeue=False, **kw)


def _epoch(run_dir, epoch, **kw):
    _train(run_dir, epoch, **kw)
    return run_cluster(run_dir, epoch, CLUSTER)


@pytest.fixture(scope="module")
def clustered(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("excl") / "run"
    make_store(run_dir / "store", n_shards=2, tiles_per_shard=N // 2, size=32)
    _epoch(run_dir, 0)
    _epoch(run_dir, 1)
    return run_dir


def _preempt_at(step_in_job: int, flag: PreemptionFlag):
    seen = []

    def hook(step: int) -> None:
        seen.append(step)
        if len(seen) == step_in_job:
            flag.set()  # what the USR2 handler does

    return hook


def test_excluded_tiles_are_never_drawn_and_labelled_minus_one_until_undone(clustered):
    run_dir = clustered
    labels1 = read_labels(run_dir, 1, N)
    target = int(np.bincount(labels1).argmax())
    assert launch(["exclude", str(run_dir), "--epoch", "1", "--clusters", str(target)]) == 0
    mask = read_mask(run_dir, N)
    assert mask.sum() == (labels1 == target).sum() > 0
    record = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("kind") == "exclude"][-1]
    assert record["clusters"] == [target] and record["tiles"] == mask.sum() and record["user"]

    # the labels the next segment trains on: excluded tiles unassigned, the rest untouched
    masked, _ = load_labels(run_dir, 1, N)
    assert (masked[mask] == -1).all() and (masked[~mask] == labels1[~mask]).all()

    flag = PreemptionFlag()
    with pytest.raises(Preempted):
        _train(run_dir, 2, flag=flag, on_step=_preempt_at(2, flag))
    stats = _epoch(run_dir, 2)  # the requeued job resumes the segment, then clusters
    before, after = np.asarray(open_bank(run_dir, 1)), np.asarray(open_bank(run_dir, 2))
    drawn = (after != before).any(axis=1)
    assert drawn.any() and not drawn[mask].any(), "an excluded tile was drawn"
    labels2 = read_labels(run_dir, 2, N)
    assert (labels2[mask] == -1).all() and (labels2[~mask] >= 0).all()
    assert stats["excluded"] == mask.sum() and sum(stats["sizes"]) == N - mask.sum()

    assert launch(["exclude", str(run_dir), "--epoch", "1", "--clusters", str(target), "--undo"]) == 0
    assert not read_mask(run_dir, N).any()
    # segment 3 trains on labels[2], where they are still -1; clustering 3 labels them again …
    _epoch(run_dir, 3)
    assert (read_labels(run_dir, 3, N) >= 0).all()
    assert json.loads((run_dir / "labels" / "epoch-0003" / "stats.json").read_text())["excluded"] == 0
    # … and segment 4 draws them
    _train(run_dir, 4)
    redrawn = (np.asarray(open_bank(run_dir, 4)) != np.asarray(open_bank(run_dir, 3))).any(axis=1)
    assert redrawn[mask].any(), "undo did not bring the tiles back into sampling"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--epoch", "1", "--clusters", "x"], "comma-separated integers"),
        (["--epoch", "9", "--clusters", "0"], "no complete labels"),
        (["--epoch", "1", "--clusters", "99"], "has no cluster 99"),
    ],
)
def test_bad_exclude_arguments_are_one_line_errors(clustered, capsys, args, message):
    before = read_mask(clustered, N)
    assert launch(["exclude", str(clustered), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err
    after = read_mask(clustered, N)
    assert (before is None and after is None) or (after == before).all()


def test_every_training_step_has_its_tensorboard_scalars(clustered):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    last = max(json.loads(p.read_text())["global_step"] for p in (clustered / "train").glob("*.done.json"))
    steps = set()
    for events in (clustered / "tb").glob("events.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if "step/loss" in accumulator.Tags()["scalars"]:
            steps |= {s.step for s in accumulator.Scalars("step/loss")}
    assert last > 0 and steps == set(range(1, last + 1))


def test_every_clustered_epoch_has_its_tensorboard_scalars_without_loading_torch(clustered, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"  # a copy: the module's fixture stays as it was
    shutil.copytree(clustered / "labels", run_dir / "labels")
    for record in read_jsonl(clustered / "metrics.jsonl"):
        if record.get("kind") != "epoch":  # the train and cluster records an epoch summary joins
            append_jsonl(run_dir / "metrics.jsonl", record)
    code = (
        "import sys; from pathlib import Path; from dcssl.paths import RunPaths; "
        "from dcssl.pipeline.report import publish_epoch; "
        f"[publish_epoch(RunPaths(Path({str(run_dir)!r})), e) for e in (0, 1)]; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)  # what the cluster job's rank 0 runs
    epochs = {r["epoch"]: r for r in read_jsonl(run_dir / "metrics.jsonl") if r.get("kind") == "epoch"}
    scalars: dict[str, dict[int, float]] = {}
    for events in (run_dir / "tb").glob("events.*"):  # one event file per publishing job
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            scalars.setdefault(tag, {}).update({s.step: s.value for s in accumulator.Scalars(tag)})
    assert sorted(epochs) == [0, 1] == sorted(scalars["epoch/clusters_used"])
    assert scalars["epoch/clusters_used"] == {e: r["clusters_used"] for e, r in epochs.items()}
    # the bootstrap (epoch 0) has neither a training loss nor a predecessor to compare with
    assert scalars["epoch/loss"] == {1: pytest.approx(epochs[1]["loss"], rel=1e-6)}
    assert scalars["epoch/nmi_prev"] == {1: pytest.approx(epochs[1]["nmi_prev"], rel=1e-6)}
