"""Run configuration: each stage owns a section of ``RUN_DIR/config.yaml``.

Stage CLIs (``python -m dcssl.tile|train|cluster RUN_DIR …``) read their own section of the
run's resolved config, then apply ``section.key=value`` overrides, so an sbatch script needs only
the run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml

from hpc.config import ConfigError, from_dict, parse_overrides

__all__ = ["load_section", "ConfigError"]

T = TypeVar("T")


def load_section(cls: type[T], section: str, run_dir: str | Path | None = None,
                 config_path: str | Path | None = None, overrides: list[str] = ()) -> T:
    """Section ``section`` of the config, validated as ``cls``.

    Sources, later winning: ``cls`` defaults ← ``RUN_DIR/config.yaml`` (if it exists) ←
    ``config_path`` ← overrides given as ``section.key=value`` (others are ignored here).
    """
    data: dict = {}
    files = [Path(run_dir) / "config.yaml"] if run_dir is not None else []
    if config_path is not None:
        if not Path(config_path).is_file():
            raise ConfigError(f"{config_path}: config file not found; pass an existing YAML file")
        files.append(Path(config_path))
    for file in files:
        if file.is_file():
            try:
                document = yaml.safe_load(file.read_text()) or {}
            except yaml.YAMLError:
                raise ConfigError(f"{file}: not valid YAML; fix the syntax") from None
            if not isinstance(document, dict):
                raise ConfigError(f"{file}: the top level must be a mapping of sections")
            part = document.get(section) or {}
            if not isinstance(part, dict):
                raise ConfigError(f"{file}: section {section!r} must be a mapping")
            data.update(part)
    mine = [o for o in overrides if o.split("=", 1)[0].startswith(section + ".")]
    data.update(parse_overrides(mine).get(section, {}))
    return from_dict(cls, data, prefix=f"{section}.")
