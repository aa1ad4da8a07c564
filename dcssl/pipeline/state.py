"""state.json: which job ran (or runs) each step, where its log is, and how it ended."""

from __future__ import annotations

import json
import time
from pathlib import Path

from dcssl.paths import RunPaths
from hpc.checkpoint import atomic_write_text
from hpc.config import ConfigError, read_text_file

__all__ = ["RunState"]


def _read(path: Path) -> dict:
    """state.json's document, or a one-line ConfigError naming the file."""
    try:
        data = json.loads(read_text_file(path))
    except json.JSONDecodeError:
        data = None
    if not isinstance(data, dict) or not isinstance(data.setdefault("steps", {}), dict):
        raise ConfigError(f"{path}: not a run state document; move it aside to start the record afresh")
    return data


class RunState:
    """A small JSON document rewritten atomically after every change."""

    def __init__(self, paths: RunPaths):
        self.path = paths.state
        self.data: dict = {"steps": {}}
        if self.path.is_file():
            self.data = _read(self.path)

    def step(self, name: str) -> dict:
        return self.data["steps"].get(name, {})

    def update(self, name: str, **fields) -> None:
        record = self.data["steps"].setdefault(name, {})
        record.update(fields, updated=round(time.time(), 3))
        self.save()

    def set(self, **fields) -> None:
        self.data.update(fields)
        self.save()

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.data, indent=1, sort_keys=True))

    @staticmethod
    def log_path(paths: RunPaths, name: str) -> Path:
        return paths.logs / f"{name}.log"
