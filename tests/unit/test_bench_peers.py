"""The peer runner (SimCLR / BYOL / SwAV through lightly) on dcssl's trunk, and the bench's checks."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from dcssl.bench.peers import PEERS, images_for_cpu, race_peer, train_peer
from dcssl.bench.quality import main as quality
from dcssl.train.model import DeepClusterNet
from dcssl.train.synthetic import make_store, tiny_config

BATCH = 16


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("peers") / "store"
    make_store(root, n_shards=1, tiles_per_shard=48, size=32)
    return root


@pytest.mark.parametrize("method", PEERS)
def test_each_peer_trains_a_few_steps_of_the_same_trunk(store, method):
    cfg = tiny_config(batch_size=BATCH)
    torch.manual_seed(cfg.seed)
    initial = DeepClusterNet(cfg.model, k=1).trunk.state_dict()
    run = train_peer(method, store, cfg, images=3 * BATCH)
    assert run.steps == 3 and len(run.losses) == 3 and run.images == 3 * BATCH
    assert all(torch.isfinite(torch.tensor(run.losses)))
    assert run.cpu_seconds > 0
    trained = run.net.trunk.state_dict()
    assert list(trained) == list(initial)  # dcssl's trunk, as DeepCluster trains it
    assert not torch.equal(trained["conv1.weight"], initial["conv1.weight"])


def _weights(net) -> dict:
    return {k: v.clone() for k, v in net.state_dict().items()}


@pytest.mark.parametrize("method", ["simclr", "byol"])
def test_a_peer_run_is_bit_identical_given_the_seed(store, method):
    cfg = tiny_config(batch_size=BATCH)
    # 4 steps over a 48-tile store: the run crosses an epoch (a fresh permutation, new streams)
    first, second = (train_peer(method, store, cfg, images=4 * BATCH) for _ in range(2))
    a, b = _weights(first.net), _weights(second.net)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert first.losses == second.losses
    other = train_peer(method, store, replace(cfg, seed=cfg.seed + 1), images=4 * BATCH)
    assert not torch.equal(_weights(other.net)["trunk.conv1.weight"], a["trunk.conv1.weight"])


def test_the_schedule_spans_exactly_the_run_and_ends_there(store, monkeypatch):
    """The cosine reaches its end at the run's last step, so the equal-images encoder is not a
    mid-schedule snapshot: a 2-step run is not the first 2 steps of a 4-step one."""
    cfg = tiny_config(batch_size=BATCH)
    original = torch.optim.SGD.step
    lrs: list[list[float]] = []
    for steps in (2, 4):
        seen: list[float] = []

        def spy(self, *args, _seen=seen, **kwargs):
            _seen.append(self.param_groups[0]["lr"])
            return original(self, *args, **kwargs)

        monkeypatch.setattr(torch.optim.SGD, "step", spy)
        run = train_peer("simclr", store, cfg, images=steps * BATCH - BATCH // 4)  # rounds to whole batches
        assert run.steps == steps and run.images == steps * BATCH
        lrs.append(seen)
    top = 0.06 * BATCH / 256
    assert lrs[0] == pytest.approx([top, top * 0.5])  # cos(0), cos(π/2)
    assert lrs[1] == pytest.approx([top * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(4)])


def test_images_for_cpu_buys_whole_batches_at_the_runs_rate():
    assert images_for_cpu(101.0, 10.0, 16) == 1008  # 1010 images → 63.1 batches → 63
    assert images_for_cpu(100.0, 0.0, 16) == 16  # at least one batch
    assert images_for_cpu(33.0, 60.0, 64) == 31 * 64


def test_race_peer_sizes_the_cpu_run_from_the_images_runs_rate(store):
    cfg = tiny_config(batch_size=BATCH)
    tiny = race_peer("simclr", store, cfg, images=2 * BATCH, cpu_budget_s=1e-9)
    assert tiny.images_at == {"images": 2 * BATCH, "cpu": BATCH}  # one batch: the least it buys
    assert tiny.snapshots["cpu"] is not tiny.snapshots["images"]
    alone = train_peer("simclr", store, cfg, images=2 * BATCH).net
    same = _weights(alone)
    got = _weights(tiny.snapshots["images"])
    assert all(torch.equal(got[k], same[k]) for k in same)  # the equal-images run is a run of its own
    result = race_peer("simclr", store, cfg, images=2 * BATCH, cpu_budget_s=4 * tiny.cpu_seconds_at["images"])
    rate = result.images_per_cpu_second
    assert rate == pytest.approx(2 * BATCH / result.cpu_seconds_at["images"])
    assert result.images_at["cpu"] == images_for_cpu(rate, result.cpu_budget_s, BATCH)
    assert result.images_at["cpu"] % BATCH == 0 and result.cpu_seconds_at["cpu"] > 0
    reuse = race_peer("simclr", store, cfg, images=BATCH, cpu_budget_s=0.0)  # both one batch
    assert reuse.snapshots["cpu"] is reuse.snapshots["images"] and reuse.steps == 1  # one run, once


def test_a_store_smaller_than_a_batch_is_refused(store):
    with pytest.raises(ValueError, match="fewer than one batch of 64"):
        train_peer("simclr", store, tiny_config(batch_size=64), images=64)


def test_quality_bench_rejects_unknown_peers_and_missing_folders(tmp_path, capsys):
    assert quality(["--tiles", str(tmp_path), "--peers", "simclr,dino2"]) == 2
    assert "--peers dino2: unknown; choose from simclr,byol,swav" in capsys.readouterr().err
    assert quality(["--tiles", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs train/ and test/ folders" in err[0]


def test_pretraining_minutes_add_up_over_invocations_of_one_run(tmp_path):
    from dcssl.bench.quality import _add_pretrain_minutes

    assert _add_pretrain_minutes(tmp_path, 2.0, 3.5) == (2.0, 3.5)
    assert _add_pretrain_minutes(tmp_path, 0.25, 0.5) == (2.25, 4.0)  # a --peers re-run of a finished run
