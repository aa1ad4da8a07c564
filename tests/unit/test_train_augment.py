"""Batch augmentations: reproducible per sample, independent of batching, geometrically exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dcssl.train.augment import N_PARAMS, BatchAugment, eval_transform, sample_seeds, uniforms
from dcssl.train.config import AugmentConfig
from dcssl.train.synthetic import synthetic_tile


def _tiles(n: int = 6, size: int = 48) -> torch.Tensor:
    rng = np.random.default_rng(0)
    tiles = np.stack([synthetic_tile(rng, i % 4, size, 4) for i in range(n)])
    return torch.from_numpy(tiles).permute(0, 3, 1, 2).contiguous()


def _plain(**changes) -> AugmentConfig:
    """No randomness left unless switched back on by ``changes``."""
    base = dict(
        size=48,
        scale_min=1.0,
        scale_max=1.0,
        ratio_min=1.0,
        ratio_max=1.0,
        flips=False,
        rot90=False,
        color="none",
        grayscale_p=0.0,
    )
    return AugmentConfig(**{**base, **changes})


def test_uniforms_are_a_pure_function_of_the_sample_seed():
    seeds = sample_seeds(11, 3, np.arange(1000))
    u = uniforms(seeds)
    assert u.shape == (1000, N_PARAMS) and u.dtype == np.float32
    assert 0.0 <= u.min() and u.max() < 1.0
    assert abs(float(u.mean()) - 0.5) < 0.01
    assert np.array_equal(u[500:], uniforms(seeds[500:]))  # independent of what else is in the batch
    assert np.unique(seeds).size == seeds.size
    assert not np.array_equal(seeds, sample_seeds(11, 4, np.arange(1000)))
    assert not np.array_equal(seeds, sample_seeds(12, 3, np.arange(1000)))


def test_augmenting_a_batch_equals_augmenting_each_tile_alone():
    images = _tiles()
    u = torch.from_numpy(uniforms(sample_seeds(0, 1, np.arange(len(images)))))
    aug = BatchAugment(AugmentConfig(size=32, color="both", grayscale_p=0.3))
    batch = aug(images, u)
    assert batch.shape == (len(images), 3, 32, 32) and batch.dtype == torch.float32
    assert torch.equal(batch, aug(images, u))
    for i in range(len(images)):
        assert torch.allclose(aug(images[i : i + 1], u[i : i + 1])[0], batch[i], atol=1e-5)
    assert not torch.allclose(batch[0], batch[1])


def test_without_randomness_the_view_is_the_eval_view():
    images = _tiles()
    u = torch.rand(len(images), N_PARAMS)
    cfg = _plain()
    assert torch.allclose(BatchAugment(cfg)(images, u), eval_transform(images, cfg), atol=1e-5)


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_rotations_are_exact_quarter_turns(k):
    images = _tiles(2)
    u = torch.zeros(2, N_PARAMS)
    u[:, 6] = (k + 0.5) / 4
    cfg = _plain(rot90=True)
    out = BatchAugment(cfg)(images, u)
    expected = torch.rot90(eval_transform(images, cfg), k, dims=(2, 3))
    assert torch.allclose(out, expected, atol=1e-5)


def test_flips_mirror_the_tile():
    images = _tiles(2)
    u = torch.ones(2, N_PARAMS)
    u[:, 4] = 0.0  # horizontal flip on, vertical off
    cfg = _plain(flips=True)
    out = BatchAugment(cfg)(images, u)
    assert torch.allclose(out, torch.flip(eval_transform(images, cfg), dims=(3,)), atol=1e-5)


def test_crop_covers_the_configured_area():
    images = _tiles(1, size=64)
    u = torch.full((1, N_PARAMS), 0.5)
    cfg = _plain(size=32, scale_min=0.25, scale_max=0.25)  # the centred 32×32 of a 64 px tile
    out = BatchAugment(cfg)(images, u)
    centre = eval_transform(images[:, :, 16:48, 16:48], cfg)
    assert torch.allclose(out, centre, atol=1e-4)


def test_colour_operations():
    images = _tiles(3)
    u = torch.rand(3, N_PARAMS)
    gray = BatchAugment(_plain(grayscale_p=1.0, mean=[0, 0, 0], std=[1, 1, 1]))(images, u)
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    still = _plain(color="hed", hed_sigma=0.0, hed_bias=0.0)
    assert torch.allclose(BatchAugment(still)(images, u), eval_transform(images, still), atol=1e-3)
    jitter = _plain(color="jitter", jitter_p=1.0)
    out = BatchAugment(jitter)(images, u)
    assert not torch.allclose(out, eval_transform(images, jitter), atol=1e-2)
    u[:, 7] = 0.99  # jitter_p 0.8 → these tiles are left alone
    quiet = _plain(color="jitter")
    assert torch.allclose(BatchAugment(quiet)(images, u), eval_transform(images, quiet), atol=1e-5)


def test_fused_colour_jitter_matches_torchvision_step_by_step():
    import torchvision.transforms.v2.functional as TF

    x = torch.rand(5, 3, 16, 16) * 0.4 + 0.3  # mid-range: no clipping between the steps
    u = torch.from_numpy(uniforms(sample_seeds(2, 0, np.arange(5))))
    u[:, 7] = 0.0  # jitter on for every tile
    cfg = _plain(
        size=16,
        color="jitter",
        brightness=0.2,
        contrast=0.2,
        saturation=0.2,
        hue=0.0,
        mean=[0, 0, 0],
        std=[1, 1, 1],
    )
    out = BatchAugment(cfg)(x, u)
    for i in range(5):
        b, c, s = (1 + 0.2 * (2 * u[i, col].item() - 1) for col in (8, 9, 10))
        expected = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(x[i], b), c), s)
        assert torch.allclose(out[i], expected, atol=2e-3)
