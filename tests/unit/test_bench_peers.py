"""The peer runner (SimCLR / BYOL / SwAV through lightly) on dcssl's trunk, and the bench's checks."""

from __future__ import annotations

import pytest
import torch

from dcssl.bench.peers import PEERS, train_peer
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
    result = train_peer(method, store, cfg, images=3 * BATCH, cpu_budget_s=0.0)
    assert result.steps == 3 and len(result.losses) == 3
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert result.images_at == {"cpu": BATCH, "images": 3 * BATCH}  # CPU budget 0: met at once
    trained = result.snapshots["images"].trunk.state_dict()
    assert list(trained) == list(initial)  # dcssl's trunk, as DeepCluster trains it
    assert not torch.equal(trained["conv1.weight"], initial["conv1.weight"])
    first = result.snapshots["cpu"].trunk.state_dict()["conv1.weight"]
    assert not torch.equal(first, trained["conv1.weight"])  # snapshots taken at their own steps


def test_the_cpu_budget_can_outlast_the_images_budget(store):
    cfg = tiny_config(batch_size=BATCH)
    result = train_peer("simclr", store, cfg, images=BATCH, cpu_budget_s=1e-9)
    assert result.images_at["images"] == BATCH and result.steps >= 1
    result = train_peer("simclr", store, cfg, images=BATCH, cpu_budget_s=0.5)
    assert result.images_at["images"] == BATCH and result.images_at["cpu"] >= BATCH
    assert result.cpu_seconds_at["cpu"] >= 0.5


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
