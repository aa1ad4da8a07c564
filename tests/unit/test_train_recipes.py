"""Training recipe options: fp16 + gradient scaler, multi-crop views, ViT trunks (timm)."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from dcssl.cluster.kmeans import kmeans
from dcssl.epochs.features import open_bank
from dcssl.evaluate.encoder import random_encoder, trained_encoder
from dcssl.evaluate.export import export_encoder
from dcssl.store import build_manifest
from dcssl.tile.config import TileConfig
from dcssl.tile.worker import tile_slide
from dcssl.train.augment import MultiCrop, uniforms, view_uniforms
from dcssl.train.sampler import UniformClusterSampler
from dcssl.train.segment import checkpoint_manager, run_segment
from dcssl.train.synthetic import make_store, tiny_config, write_pseudo_labels
from dcssl.train.trainer import Trainer
from hpc.env import DistEnv
from hpc.preemption import Preempted, PreemptionFlag

DATA = Path(__file__).resolve().parents[1] / "data"
N, BATCH = 64, 16


def _multicrop(cfg, g: int = 2, local: int = 3, size: int = 20):
    cfg.augment = replace(cfg.augment, global_crops=g, local_crops=local, local_size=size)
    return cfg


def _run(run_dir: Path, epoch: int, cfg, **kw) -> dict:
    return run_segment(run_dir, epoch, cfg, flag=kw.pop("flag", PreemptionFlag()), requeue=False, **kw)


@pytest.fixture(scope="module")
def booted(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("recipes")
    store = make_store(root / "store", n_shards=2, tiles_per_shard=N // 2, size=32)
    _run(root, 0, tiny_config(batch_size=BATCH))
    write_pseudo_labels(root, 0, store.labels(), 4)
    return root


def _preempted_then_resumed(booted: Path, tmp_path: Path, cfg) -> tuple[Path, Path]:
    """(uninterrupted epoch 1, the same epoch preempted at step 2 and resumed)."""
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    shutil.copytree(booted, whole)
    shutil.copytree(booted, resumed)
    _run(whole, 1, cfg)
    flag = PreemptionFlag()
    with pytest.raises(Preempted):
        _run(resumed, 1, cfg, flag=flag, on_step=lambda step: step == 2 and flag.set())
    _run(resumed, 1, cfg)
    return whole, resumed


def _final(run_dir: Path) -> dict:
    return checkpoint_manager(run_dir).load_latest()[1]


def _assert_same_final_state(a: Path, b: Path) -> None:
    sa, sb = _final(a), _final(b)
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"]), "weights differ"
    assert sa["scaler"] == sb["scaler"]
    assert np.array_equal(open_bank(a, 1), open_bank(b, 1))


# ---------------------------------------------------------------------------------- fp16 + scaler
def test_fp16_autocasts_in_float16_and_checkpoints_its_scaler(booted):
    trainer = Trainer(booted, tiny_config(batch_size=BATCH, precision="fp16"), DistEnv(), torch.device("cpu"))
    trainer.start_epoch(1, np.arange(N) % 4, 4)
    batch = next(iter(trainer.batches(1)))
    with trainer.autocast():
        logits, _ = trainer.model(trainer.inputs(batch))
    assert logits.dtype == torch.float16 and trainer.scaler.is_enabled()
    trainer.train_step(batch)
    assert trainer.state_dict()["scaler"]["_growth_tracker"] == 1  # one finite step counted
    plain = Trainer(booted, tiny_config(batch_size=BATCH, precision="fp32"), DistEnv(), torch.device("cpu"))
    assert plain.state_dict()["scaler"] is None


def test_fp16_skips_a_step_with_inf_gradients_and_lowers_the_scale(booted):
    trainer = Trainer(booted, tiny_config(batch_size=BATCH, precision="fp16"), DistEnv(), torch.device("cpu"))
    trainer.start_epoch(1, np.arange(N) % 4, 4)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    state = trainer.state_dict()["scaler"]
    trainer.scaler.load_state_dict({**state, "scale": 3e38})  # loss × scale overflows float32
    trainer.train_step(next(iter(trainer.batches(1))))
    assert trainer.scaler.get_scale() == pytest.approx(1.5e38)
    weights = [k for k in before if "weight" in k]
    assert all(torch.equal(before[k], trainer.model.state_dict()[k]) for k in weights)


def test_fp16_preempted_run_resumes_to_the_same_weights_and_scaler(booted, tmp_path):
    cfg = tiny_config(batch_size=BATCH, precision="fp16", checkpoint_every=1000)
    whole, resumed = _preempted_then_resumed(booted, tmp_path, cfg)
    assert _final(whole)["scaler"]["_growth_tracker"] == N // BATCH
    _assert_same_final_state(whole, resumed)


# ---------------------------------------------------------------------------------- multi-crop
def _keys(n: int = BATCH, epoch: int = 1) -> list[tuple]:
    sampler = UniformClusterSampler((np.arange(N) % 4).astype(np.int32), seed=0)
    sampler.set_epoch(epoch)
    return list(sampler)[:n]


def test_multicrop_batches_have_the_stated_shapes(booted):
    cfg = _multicrop(tiny_config(batch_size=BATCH), g=2, local=4, size=20)
    trainer = Trainer(booted, cfg, DistEnv(), torch.device("cpu"))
    batch = trainer.dataset.__getitems__(_keys())
    assert batch["images"].shape == (2, BATCH, 3, 32, 32)
    assert batch["local_images"].shape == (4, BATCH, 3, 20, 20)
    views = trainer.inputs(batch)
    assert [tuple(v.shape) for v in views] == [(2 * BATCH, 3, 32, 32), (4 * BATCH, 3, 20, 20)]
    trainer.start_epoch(1, np.arange(N) % 4, 4)
    logits, z = trainer.model(views)
    assert logits.shape == (6 * BATCH, 4) and z.shape == (6 * BATCH, 32)
    assert trainer.train_step(batch).embeddings.shape == (BATCH, 32)  # the bank gets one row per tile


def test_each_crop_has_its_own_seeded_stream():
    seeds = np.array([3, 17, 2**40 + 5])
    u = view_uniforms(seeds, 6)
    assert np.array_equal(u[:, 0], uniforms(seeds))  # view 0 = the single-crop view
    flat = u.transpose(1, 0, 2).reshape(6 * 3, -1)
    assert len({row.tobytes() for row in flat}) == 18  # no two crops share a stream
    assert np.array_equal(view_uniforms(seeds[1:], 6), u[1:])  # a function of the sample alone


def test_multicrop_views_are_reproducible_and_device_independent(booted):
    cfg = _multicrop(tiny_config(batch_size=BATCH))
    worker = Trainer(booted, cfg, DistEnv(), torch.device("cpu"))
    keys = _keys()
    first, again = worker.dataset.__getitems__(keys), worker.dataset.__getitems__(keys[4:])
    assert torch.equal(first["images"][:, 4:], again["images"])
    assert torch.equal(first["local_images"][:, 4:], again["local_images"])
    views = first["local_images"]
    assert not any(torch.equal(views[i], views[j]) for i in range(3) for j in range(i))
    cfg.augment.device = "gpu"  # augmentation in the training process, from the batch's uniforms
    device = Trainer(booted, cfg, DistEnv(), torch.device("cpu"))
    raw = device.dataset.__getitems__(keys)
    assert raw["u"].shape == (BATCH, 5, 20)
    on_device = device.inputs(raw)
    torch.testing.assert_close(on_device[0], worker.inputs(first)[0])
    torch.testing.assert_close(on_device[1], worker.inputs(first)[1])
    single = Trainer(booted, tiny_config(batch_size=BATCH), DistEnv(), torch.device("cpu"))
    torch.testing.assert_close(single.dataset.__getitems__(keys)["images"], first["images"][0])


def test_multicrop_preempted_run_resumes_to_the_same_weights(booted, tmp_path):
    cfg = _multicrop(tiny_config(batch_size=BATCH, checkpoint_every=1000))
    whole, resumed = _preempted_then_resumed(booted, tmp_path, cfg)
    _assert_same_final_state(whole, resumed)
    plain = tmp_path / "plain"
    shutil.copytree(booted, plain)
    _run(plain, 1, tiny_config(batch_size=BATCH))
    assert not torch.equal(
        _final(plain)["model"]["projection.weight"], _final(whole)["model"]["projection.weight"]
    )


def test_multicrop_options_are_validated():
    cfg = tiny_config()
    with pytest.raises(ValueError, match="global_crops must be > 0"):
        replace(cfg.augment, global_crops=0)
    with pytest.raises(ValueError, match="local_crops must be ≥ 0"):
        replace(cfg.augment, local_crops=-1)
    assert MultiCrop(replace(cfg.augment, global_crops=2)).views == 2


def test_a_view_that_reaches_the_last_resnet_stage_as_1x1_is_refused():
    # torch's CPU bf16 conv returns NaN weight gradients for a stride-2 conv on a 1×1 map
    small_views = replace(tiny_config().augment, local_crops=2, local_size=16)
    with pytest.raises(ValueError, match=r"augment.local_size=16 leaves resnet18's last stage a 1×1 input"):
        replace(tiny_config(), augment=small_views)
    with pytest.raises(ValueError, match=r"augment.size=16 .* use ≥ 17 px or model.stem=small"):
        tiny_config(size=16)
    assert replace(tiny_config(), augment=replace(small_views, local_size=17)).augment.local_size == 17
    small_stem = replace(tiny_config().model, stem="small")
    assert replace(tiny_config(), model=small_stem, augment=small_views).model.stem == "small"
    vit = replace(tiny_config().model, arch="vit_tiny_patch16_224")
    assert replace(tiny_config(), model=vit, augment=small_views).model.arch.startswith("vit_")


# ---------------------------------------------------------------------------------- ViT (timm)
@pytest.fixture(scope="module")
def vit_run(tmp_path_factory):
    """ViT-tiny: the bootstrap and one DeepCluster epoch on the CMU-1 store, k-means labels between."""
    root = tmp_path_factory.mktemp("vit")
    tile_slide(DATA / "cmu-1-small-region.svs", root / "store" / "shards" / "cmu.h5", "cmu", TileConfig())
    store = build_manifest(root / "store")
    cfg = tiny_config(size=32, batch_size=8)
    cfg.model = replace(cfg.model, arch="vit_tiny_patch16_224", proj_dim=32)
    boot = _run(root, 0, cfg)
    bank = np.asarray(open_bank(root, 0), dtype=np.float32)
    _, labels, _ = kmeans(bank, 4, iterations=10, seed=0, log_every=0)
    write_pseudo_labels(root, 0, labels, 4)
    return root, cfg, store, boot, _run(root, 1, cfg)


def test_vit_trunk_trains_a_deepcluster_epoch_on_the_cmu1_store(vit_run):
    root, cfg, store, _, epoch = vit_run
    assert store.n_tiles == 44
    assert epoch["complete"] and epoch["steps"] == 44 // 8 and np.isfinite(epoch["loss"])
    trained = _final(root)["model"]
    assert trained["trunk.pos_embed"].shape == (1, 197, 192)  # timm's 224-px shape, interpolated
    initial = random_encoder(cfg).net.state_dict()  # the weights training started from
    key = "trunk.blocks.0.attn.qkv.weight"
    assert not torch.equal(initial[key], trained[key])


def test_vit_export_loads_in_timm_and_matches_the_trunk(vit_run, tmp_path):
    root, cfg, *_ = vit_run
    out = tmp_path / "encoder.pt"
    document = export_encoder(root, cfg, out)
    assert document["timm_compatible"] and not document["torchvision_compatible"]
    assert document["load"] == "timm.create_model('vit_tiny_patch16_224', checkpoint_path=PATH)"
    model = timm.create_model("vit_tiny_patch16_224", checkpoint_path=str(out)).eval()
    trunk = trained_encoder(root, cfg).net.trunk.eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True), trunk(x))
