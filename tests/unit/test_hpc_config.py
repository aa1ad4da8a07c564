"""hpc.config: YAML + overrides into validated dataclasses; every mistake is one clear line."""

import subprocess
import sys
from dataclasses import dataclass, field
from typing import Literal

import pytest

from hpc.config import ConfigError, dump_yaml, field_docs, load_config


@dataclass
class Optim:
    lr: float = 0.05
    """Peak learning rate."""
    kind: Literal["sgd", "adamw"] = "sgd"
    """Optimizer."""

    def __post_init__(self):
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass
class Top:
    epochs: int = 3
    """How many epochs."""
    name: str | None = None
    """A name."""
    sizes: list[int] = field(default_factory=lambda: [1, 2])
    """Some sizes."""
    optim: Optim = field(default_factory=Optim)
    """The optimizer section."""


def test_defaults_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 5\noptim:\n  kind: adamw\n")
    cfg = load_config(Top, path, ["optim.lr=1", "sizes=[3, 4]", "name=x"])
    assert cfg.epochs == 5 and cfg.optim.kind == "adamw"
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.sizes == [3, 4] and cfg.name == "x"
    assert load_config(Top, None, ["name=null"]).name is None
    assert "kind: adamw" in dump_yaml(cfg)


@pytest.mark.parametrize(
    "overrides, fragment",
    [
        (["optim.lrr=1"], "optim.lrr: unknown key; allowed here: kind, lr"),
        (["epochs=three"], "epochs: expected int, got 'three'"),
        (["epochs=true"], "epochs: expected int"),
        (["optim.kind=adam"], "optim.kind: 'adam' is not allowed; choose one of 'sgd' | 'adamw'"),
        (["optim.lr=-1"], "optim: lr must be > 0, got -1.0"),
        (["optim=3"], "optim: expected a section"),
        (["epochs"], "must look like section.key=value"),
    ],
)
def test_errors_name_the_key(overrides, fragment):
    with pytest.raises(ConfigError) as err:
        load_config(Top, None, overrides)
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(Top, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Top, bad)


def test_field_docs_are_read_from_source():
    assert field_docs(Top)["epochs"] == "How many epochs."
    assert field_docs(Optim) == {"lr": "Peak learning rate.", "kind": "Optimizer."}


def test_cli_exit_status_and_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "dcssl.launch", "status", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: ")
