"""Run configuration: each stage owns a section of ``RUN_DIR/config.yaml``.

Stage CLIs (``python -m dcssl.tile|train|cluster RUN_DIR …``) read their own section of the
run's resolved config, then apply ``section.key=value`` overrides, so an sbatch script needs only
the run directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import yaml

from hpc.checkpoint import atomic_write_text
from hpc.config import ConfigError, dump_yaml, from_dict, merge_dicts, parse_overrides

__all__ = ["load_section", "load_run_config", "save_run_config", "LoopConfig", "ConfigError"]

T = TypeVar("T")


def _read_yaml(file: Path) -> dict:
    try:
        document = yaml.safe_load(file.read_text()) or {}
    except yaml.YAMLError:
        raise ConfigError(f"{file}: not valid YAML; fix the syntax") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{file}: the top level must be a mapping of sections")
    return document


def _config_files(run_dir: str | Path | None, config_path: str | Path | None) -> list[Path]:
    """RUN_DIR/config.yaml (when it exists), then the --config file (which must exist)."""
    files = [Path(run_dir) / "config.yaml"] if run_dir is not None else []
    files = [f for f in files if f.is_file()]
    if config_path is not None:
        if not Path(config_path).is_file():
            raise ConfigError(f"{config_path}: config file not found; pass an existing YAML file")
        files.append(Path(config_path))
    return files


def load_section(
    cls: type[T],
    section: str,
    run_dir: str | Path | None = None,
    config_path: str | Path | None = None,
    overrides: list[str] = (),
) -> T:
    """Section ``section`` of the config, validated as ``cls``.

    Sources, later winning: ``cls`` defaults ← ``RUN_DIR/config.yaml`` (if it exists) ←
    ``config_path`` ← overrides given as ``section.key=value`` (others are ignored here).
    """
    data: dict = {}
    for file in _config_files(run_dir, config_path):
        part = _read_yaml(file).get(section) or {}
        if not isinstance(part, dict):
            raise ConfigError(f"{file}: section {section!r} must be a mapping")
        data = merge_dicts(data, part)
    mine = [o for o in overrides if o.split("=", 1)[0].startswith(section + ".")]
    data = merge_dicts(data, parse_overrides(mine).get(section, {}))
    return from_dict(cls, data, prefix=f"{section}.")


@dataclass
class LoopConfig:
    """The DeepCluster loop around the stages."""

    epochs: int = 10
    """Training epochs after the bootstrap pass; each is a train segment then a clustering."""
    keep_features: int = 2
    """Feature banks kept on disk (older ones are deleted once their labels exist)."""

    def __post_init__(self) -> None:
        if self.epochs < 0:
            raise ValueError(f"epochs must be ≥ 0, got {self.epochs}")
        if self.keep_features < 1:
            raise ValueError(f"keep_features must be ≥ 1, got {self.keep_features}")


def load_run_config(
    run_dir: str | Path | None, config_path: str | Path | None = None, overrides: list[str] = ()
):
    """The whole run config: defaults ← RUN_DIR/config.yaml ← --config ← overrides."""
    data: dict = {}
    for file in _config_files(run_dir, config_path):
        data = merge_dicts(data, _read_yaml(file))
    from dcssl.runconfig import RunConfig  # imports every stage; kept out of stage imports

    return from_dict(RunConfig, merge_dicts(data, parse_overrides(list(overrides))))


def save_run_config(run_dir: str | Path, cfg) -> Path:
    """Write the resolved config to RUN_DIR/config.yaml (atomically)."""
    path = Path(run_dir) / "config.yaml"
    atomic_write_text(path, dump_yaml(cfg))
    return path
