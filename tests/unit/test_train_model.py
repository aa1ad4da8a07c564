"""The network: torchvision trunks, the in-place head reset, and what happens when k changes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision

from dcssl.train.config import ModelConfig
from dcssl.train.model import DeepClusterNet, Sobel, build_trunk

TINY = ModelConfig(arch="resnet18", width=8, proj_dim=16)


def _step(model: DeepClusterNet, optimizer: torch.optim.Optimizer, k: int) -> torch.Tensor:
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    target = torch.arange(8) % k
    logits, _ = model(x)
    loss = F.cross_entropy(logits, target)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return logits.detach()


@pytest.mark.parametrize(
    "arch, factory", [("resnet18", torchvision.models.resnet18), ("resnet50", torchvision.models.resnet50)]
)
def test_width_64_is_torchvision_exactly(arch, factory):
    torch.manual_seed(0)
    ours = build_trunk(arch).state_dict()
    torch.manual_seed(0)
    theirs = {k: v for k, v in factory().state_dict().items() if not k.startswith("fc.")}
    assert list(ours) == list(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)  # same layers, same init


def test_thin_trunk_and_sobel_input():
    trunk = build_trunk("resnet18", width=8, in_channels=2)
    assert trunk.out_dim == 64 and trunk.conv1.in_channels == 2
    model = DeepClusterNet(ModelConfig(arch="resnet18", width=8, proj_dim=16, sobel=True), k=3)
    logits, z = model(torch.rand(4, 3, 32, 32))
    assert logits.shape == (4, 3) and torch.allclose(z.norm(dim=1), torch.ones(4))
    flat = torch.full((1, 3, 8, 8), 0.7)
    assert Sobel()(flat)[..., 1:-1, 1:-1].abs().max() < 1e-6  # no edges in a flat image
    assert not any(p.requires_grad for p in Sobel().parameters())


def test_reset_head_is_in_place_and_leaves_the_trunk_untouched():
    model = DeepClusterNet(TINY, k=5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _step(model, optimizer, 5)
    weight, bias = model.head.weight, model.head.bias
    trunk_before = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head")}
    trunk_momentum = {id(p): optimizer.state[p]["momentum_buffer"].clone() for p in model.trunk_parameters()}
    head_before = weight.detach().clone()

    grew = model.reset_head(optimizer=optimizer, generator=torch.Generator().manual_seed(3))
    assert grew is False
    assert model.head.weight is weight and model.head.bias is bias  # the same Parameters
    assert not torch.equal(weight, head_before)
    assert abs(weight.std().item() - 0.01) < 0.004 and torch.count_nonzero(bias) == 0
    assert weight not in optimizer.state and bias not in optimizer.state  # momentum forgotten
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in trunk_before.items())
    assert all(
        torch.equal(optimizer.state[p]["momentum_buffer"], trunk_momentum[id(p)])
        for p in model.trunk_parameters()
    )
    again = DeepClusterNet(TINY, k=5)
    again.reset_head(generator=torch.Generator().manual_seed(3))
    assert torch.equal(again.head.weight, weight)  # the draw depends on the generator alone


def test_smaller_k_masks_rows_without_changing_shapes():
    model = DeepClusterNet(TINY, k=6)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    weight = model.head.weight
    assert model.reset_head(3, optimizer) is False
    assert model.head.weight is weight and model.head_rows == 6 and model.k == 3
    logits = _step(model, optimizer, 3)
    assert torch.isinf(logits[:, 3:]).all() and torch.isfinite(logits[:, :3]).all()
    assert torch.count_nonzero(weight.grad[3:]) == 0  # masked classes learn nothing


def test_larger_k_grows_the_head_inside_the_same_optimizer():
    model = DeepClusterNet(TINY, k=3)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _step(model, optimizer, 3)
    old = model.head.weight
    assert model.reset_head(7, optimizer) is True  # the caller re-wraps DDP once
    assert model.head.weight is not old and model.head.weight.shape == (7, 16)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    assert any(p is model.head.weight for p in params) and not any(p is old for p in params)
    logits = _step(model, optimizer, 7)
    assert logits.shape == (8, 7) and torch.isfinite(logits).all()
    assert optimizer.state[model.head.weight]["momentum_buffer"].shape == (7, 16)
    with pytest.raises(ValueError, match="k must be"):
        model.reset_head(0)


def test_small_stem_keeps_resolution_and_head_reset_still_works():
    x = torch.randn(2, 3, 32, 32)
    maps = {}
    for stem in ("imagenet", "small"):
        trunk = build_trunk("resnet18", width=8, stem=stem)
        body = torch.nn.Sequential(
            trunk.conv1,
            trunk.bn1,
            trunk.relu,
            trunk.maxpool,
            trunk.layer1,
            trunk.layer2,
            trunk.layer3,
            trunk.layer4,
        )
        maps[stem] = body(x).shape[-2:]
        assert trunk(x).shape == (2, trunk.out_dim) == (2, 64)
    assert maps == {"imagenet": (1, 1), "small": (4, 4)}  # the ImageNet stem collapses 32 px
    small = build_trunk("resnet18", width=64, stem="small")
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, torch.nn.Identity)
    assert list(small.state_dict()) == list(build_trunk("resnet18").state_dict())  # same keys

    model = DeepClusterNet(ModelConfig(arch="resnet18", width=8, proj_dim=16, stem="small"), k=4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _step(model, optimizer, 4)
    weight = model.head.weight
    assert model.reset_head(3, optimizer) is False and model.head.weight is weight
    logits = _step(model, optimizer, 3)
    assert torch.isinf(logits[:, 3:]).all() and torch.isfinite(logits[:, :3]).all()
    assert model.reset_head(6, optimizer) is True and model.head.weight.shape == (6, 16)
    with pytest.raises(ValueError, match="stem"):
        ModelConfig(stem="cifar")
