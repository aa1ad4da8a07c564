"""export: the trained trunk loads into torchvision's ResNet with strict=True and computes the same
features; the JSON says how it was trained; thin trunks say how to rebuild them; bad runs exit 2."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torchvision

from dcssl.evaluate.encoder import trained_encoder
from dcssl.evaluate.export import export_encoder
from dcssl.launch.__main__ import main as launch
from dcssl.train.config import ModelConfig
from dcssl.train.segment import checkpoint_manager, run_segment
from dcssl.train.synthetic import make_store, tiny_config, write_pseudo_labels
from hpc.preemption import PreemptionFlag


def _trained_run(root: Path, model: ModelConfig) -> tuple[Path, object]:
    """A run after the real bootstrap and one real training epoch (so weights moved)."""
    store = make_store(root / "store", n_shards=1, tiles_per_shard=32, size=32)
    cfg = replace(tiny_config(batch_size=16), model=model)
    for epoch in (0, 1):
        run_segment(root, epoch, cfg, flag=PreemptionFlag(), requeue=False)
        if epoch == 0:
            write_pseudo_labels(root, 0, store.labels(), 4)
    return root, cfg


@pytest.fixture(scope="module")
def full_width(tmp_path_factory):
    return _trained_run(
        tmp_path_factory.mktemp("export"),
        ModelConfig(arch="resnet18", width=64, proj_dim=32, temperature=0.5),
    )


def test_export_loads_strictly_into_torchvision_and_matches_the_trunk(full_width, tmp_path):
    run_dir, cfg = full_width
    out = tmp_path / "encoder.pt"
    document = export_encoder(run_dir, cfg, out)
    model = torchvision.models.resnet18()
    model.load_state_dict(torch.load(out, weights_only=True), strict=True)
    model.fc = torch.nn.Identity()
    trunk = trained_encoder(run_dir, cfg).net.trunk
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), trunk.eval()(x))
    step = checkpoint_manager(run_dir).steps()[-1]
    assert document["checkpoint_step"] == step and step > 0  # the trained checkpoint, not init
    assert document["epoch"] == 1 and document["k"] == 4
    assert document["torchvision_compatible"] and document["feature_dim"] == 512
    assert json.loads(out.with_suffix(".json").read_text())["arch"] == "resnet18"


def test_cli_export_ends_with_a_json_line(full_width, capsys):
    run_dir, _ = full_width
    (run_dir / "config.yaml").write_text(
        "train:\n  model: {arch: resnet18, width: 64, proj_dim: 32, temperature: 0.5}\n"
        "  augment: {size: 32, color: none}\n"
    )
    assert launch(["export", str(run_dir)]) == 0
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["torchvision_compatible"] is True
    assert Path(last["state_dict"]) == run_dir / "export" / "encoder.pt"
    assert (run_dir / "export" / "encoder.json").is_file()


def test_thin_trunk_is_exported_with_rebuild_instructions(tmp_path):
    run_dir, cfg = _trained_run(tmp_path / "thin", tiny_config().model)
    document = export_encoder(run_dir, cfg)
    assert document["torchvision_compatible"] is False
    assert "build_trunk('resnet18', width=8)" in document["load"]
    from dcssl.train.model import build_trunk

    trunk = build_trunk("resnet18", 8)
    trunk.load_state_dict(
        {k: v for k, v in torch.load(run_dir / "export" / "encoder.pt").items() if not k.startswith("fc.")},
        strict=True,
    )


def test_export_without_a_checkpoint_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    assert launch(["export", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no train checkpoint" in err
    assert len(err.strip().splitlines()) == 1
    assert launch(["export", str(tmp_path / "run"), "trian.model.width=8"]) == 2
    assert "trian.model.width=8" in capsys.readouterr().err
    assert not (tmp_path / "run" / "export").exists()


def test_small_stem_is_not_called_torchvision_compatible(tmp_path):
    # Width 64 gives torchvision's keys, but a 3×3 conv1 and no max-pool: not torchvision's net.
    model = ModelConfig(arch="resnet18", width=64, proj_dim=32, stem="small")
    run_dir, cfg = _trained_run(tmp_path / "small", model)
    document = export_encoder(run_dir, cfg)
    assert document["torchvision_compatible"] is False and document["stem"] == "small"
    assert "build_trunk('resnet18', width=64, stem='small')" in document["load"]
