"""Where things live in a run directory (see DESIGN.md, "On-disk contracts")."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dcssl.store import shard_name


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def manifest(self) -> Path:
        return self.store / "manifest.json"

    @property
    def shards(self) -> Path:
        return self.store / "shards"

    def shard(self, slide_id: str) -> Path:
        return self.shards / shard_name(slide_id)

    @property
    def slide_list(self) -> Path:
        """The tile stage's resolved slide list: array element I tiles slide I."""
        return self.root / "tile" / "slides.json"

    @property
    def tile_logs(self) -> Path:
        return self.logs / "tile"

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def lock(self) -> Path:
        """The run lock: one launcher (or job) at a time (dcssl.runlock)."""
        return self.root / "run.lock"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def charts(self) -> Path:
        return self.root / "charts"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tb"

    def features(self, epoch: int) -> Path:
        return self.root / "features" / f"epoch-{epoch:04d}"

    def labels(self, epoch: int) -> Path:
        return self.root / "labels" / f"epoch-{epoch:04d}"

    def train_done(self, epoch: int) -> Path:
        return self.root / "train" / f"epoch-{epoch:04d}.done.json"

    def settings(self, step_name: str) -> Path:
        """The settings record of one loop step (dcssl.settings owns it)."""
        return self.root / "settings" / f"{step_name}.yaml"

    def features_complete(self, epoch: int) -> bool:
        return (self.features(epoch) / "COMPLETE").is_file()

    def labels_complete(self, epoch: int) -> bool:
        return (self.labels(epoch) / "COMPLETE").is_file()
