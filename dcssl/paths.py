"""Where things live in a run directory (README, "On-disk layout of a run").

The one place a run path is spelled; what is inside an epoch's folders (file names, reading,
writing, sealing) belongs to ``dcssl.epochs``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from dcssl.store import shard_name

_EPOCH = r"epoch-(\d+)"


def _epoch_name(epoch: int) -> str:
    return f"epoch-{epoch:04d}"


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

    @property
    def features_root(self) -> Path:
        return self.root / "features"

    @property
    def labels_root(self) -> Path:
        return self.root / "labels"

    @property
    def train_markers(self) -> Path:
        """Where each finished train segment leaves its done marker."""
        return self.root / "train"

    def features(self, epoch: int) -> Path:
        return self.features_root / _epoch_name(epoch)

    def labels(self, epoch: int) -> Path:
        return self.labels_root / _epoch_name(epoch)

    def train_done(self, epoch: int) -> Path:
        return self.train_markers / f"{_epoch_name(epoch)}.done.json"

    @property
    def train_checkpoints(self) -> Path:
        return self.root / "checkpoints" / "train"

    @property
    def cluster_checkpoints_root(self) -> Path:
        return self.root / "checkpoints" / "cluster"

    def cluster_checkpoints(self, epoch: int, head: int = 0) -> Path:
        """The epoch's cluster checkpoints; an extra head's (``cluster.extra_k``) in a sub-folder."""
        folder = self.cluster_checkpoints_root / _epoch_name(epoch)
        return folder / f"head-{head}" if head else folder

    @property
    def excluded(self) -> Path:
        """The excluded-tile mask (dcssl.exclusion owns it)."""
        return self.root / "excluded.npy"

    @property
    def curated(self) -> Path:
        """The curated subset (dcssl.evaluate.curate owns it)."""
        return self.root / "curated"

    @property
    def curated_manifest(self) -> Path:
        return self.curated / "manifest.json"

    @property
    def curated_selection(self) -> Path:
        return self.curated / "selection.npz"

    @property
    def curated_store(self) -> Path:
        """The curated tiles' own store, when they were copied."""
        return self.curated / "store"

    @property
    def report(self) -> Path:
        """The HTML atlas (dcssl.report.build publishes it whole)."""
        return self.root / "report"

    @property
    def export(self) -> Path:
        """The default exported encoder (dcssl.evaluate.export)."""
        return self.root / "export" / "encoder.pt"

    @property
    def embeddings(self) -> Path:
        """The default whole-store embedding file (dcssl.evaluate.embed)."""
        return self.root / "embed" / "features.h5"

    @property
    def evaluation(self) -> Path:
        """The default evaluation summary (dcssl.evaluate.run)."""
        return self.root / "eval" / "eval.json"

    def settings(self, step_name: str) -> Path:
        """The settings record of one loop step (dcssl.settings owns it)."""
        return self.root / "settings" / f"{step_name}.yaml"

    def features_complete(self, epoch: int) -> bool:
        return (self.features(epoch) / "COMPLETE").is_file()

    def labels_complete(self, epoch: int) -> bool:
        return (self.labels(epoch) / "COMPLETE").is_file()


def epochs_in(folder: Path, suffix: str = "") -> list[int]:
    """The epochs that have an entry ``epoch-NNNN<suffix>`` in ``folder``, oldest first (hidden
    staging folders such as ``.epoch-NNNN.partial`` are not entries)."""
    if not folder.is_dir():
        return []
    pattern = re.compile(_EPOCH + re.escape(suffix))
    return sorted(int(m[1]) for p in folder.iterdir() if (m := pattern.fullmatch(p.name)))
