"""The one config loader: every subcommand and every job entry point reads its settings here.

Sources, later winning: the dataclass defaults ← the run's settings (``RUN_DIR/config.yaml``, or
a step's settings record) ← ``--config FILE`` ← ``section.key=value`` overrides. The WHOLE
document is validated every time, whichever stage runs: an unknown section or key, a section
given a value, a wrong type, a non-finite float or an unreadable file is a one-line ConfigError
(exit 2 in every CLI), raised before anything is written.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dcssl.paths import RunPaths
from dcssl.runconfig import LoopConfig, RunConfig
from hpc.checkpoint import atomic_write_text
from hpc.config import ConfigError, dump_yaml, from_dict, merge_dicts, parse_overrides, read_yaml_mapping

__all__ = [
    "load_run_config",
    "save_run_config",
    "read_run_document",
    "LoopConfig",
    "RunConfig",
    "ConfigError",
]

SECTIONS = {f.name: f.type for f in dataclasses.fields(RunConfig)}


def _section_of(key: str) -> str | None:
    """The section that has a key named ``key`` (to suggest ``tile.tile_size`` for ``tile_size``)."""
    defaults = RunConfig()
    for name in SECTIONS:
        if key in {f.name for f in dataclasses.fields(getattr(defaults, name))}:
            return name
    return None


def check_sections(document: dict, where: str) -> None:
    """Every top-level key is a known section holding a mapping; else one line naming it."""
    for name, value in document.items():
        if name not in SECTIONS:
            owner = _section_of(str(name))
            hint = f" (did you mean {owner}.{name}?)" if owner else ""
            raise ConfigError(
                f"{where}{name}: unknown section{hint}; sections are {', '.join(sorted(SECTIONS))}"
            )
        if not isinstance(value, dict):
            raise ConfigError(
                f"{where}{name}: a section takes keys ({name}.KEY=VALUE, or a mapping in YAML), "
                f"not the value {value!r}"
            )


def read_run_document(file: str | Path) -> dict:
    """A config YAML file as a mapping of known sections (its keys are checked by the loader)."""
    document = read_yaml_mapping(file)
    check_sections(document, f"{file}: ")
    return document


def load_run_config(
    run_dir: str | Path | None = None,
    config_path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: dict | None = None,
) -> RunConfig:
    """The whole run config: defaults ← ``base`` (a step's recorded settings; default
    RUN_DIR/config.yaml, if it exists) ← ``config_path`` (must exist) ← overrides; every section,
    key, type and value validated."""
    data: dict = {}
    if base is not None:
        check_sections(base, "recorded settings: ")
        data = base
    elif run_dir is not None and RunPaths(Path(run_dir)).config.exists():
        data = read_run_document(RunPaths(Path(run_dir)).config)
    if config_path is not None:
        data = merge_dicts(data, read_run_document(config_path))
    given = parse_overrides(list(overrides))
    check_sections(given, "override ")
    return from_dict(RunConfig, merge_dicts(data, given))


def save_run_config(run_dir: str | Path, cfg: RunConfig) -> Path:
    """Write the resolved config to RUN_DIR/config.yaml (atomically)."""
    path = RunPaths(Path(run_dir)).config
    atomic_write_text(path, dump_yaml(cfg))
    return path
