"""state.json: which job ran (or runs) each step, where its log is, and how it ended."""

from __future__ import annotations

import json
import time
from pathlib import Path

from dcssl.paths import RunPaths
from hpc.checkpoint import atomic_write_text

__all__ = ["RunState"]


class RunState:
    """A small JSON document rewritten atomically after every change."""

    def __init__(self, paths: RunPaths):
        self.path = paths.state
        self.data: dict = {"steps": {}}
        if self.path.is_file():
            self.data = json.loads(self.path.read_text())
            self.data.setdefault("steps", {})

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
