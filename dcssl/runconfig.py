"""RunConfig: the whole run, one section per stage (each stage owns its dataclass)."""

from __future__ import annotations

from dataclasses import dataclass, field

from dcssl.cluster.config import ClusterConfig
from dcssl.evaluate.config import CurateConfig, EmbedConfig, EvalConfig
from dcssl.report.config import ReportConfig
from dcssl.tile.config import TileConfig
from dcssl.train.config import TrainConfig
from hpc.submit import ExecutorConfig

__all__ = ["RunConfig", "LoopConfig"]


@dataclass
class LoopConfig:
    """The DeepCluster loop around the stages."""

    epochs: int = 10
    """Training epochs after the bootstrap pass; each is a train segment then a clustering."""
    keep_features: int = 2
    """Feature banks kept on disk (older ones are deleted once their labels exist)."""
    recluster_every: int = 1
    """Cluster every this many epochs (1: every epoch, DeepCluster's). An epoch E with E % N ≠ 0
    does not cluster: its labels are a sealed copy of epoch E-1's (stats ``reused_from``), so the
    next segment trains on the same labels and keeps its classifier head instead of resetting it."""

    def __post_init__(self) -> None:
        if self.recluster_every < 1:
            raise ValueError(
                f"recluster_every must be ≥ 1 (1: cluster every epoch), got {self.recluster_every}"
            )
        if self.epochs < 0:
            raise ValueError(f"epochs must be ≥ 0, got {self.epochs}")
        if self.keep_features < 1:
            raise ValueError(f"keep_features must be ≥ 1, got {self.keep_features}")


@dataclass
class RunConfig:
    """A whole run: one section per stage and one executor per kind of job."""

    tile: TileConfig = field(default_factory=TileConfig)
    """Slide reading, tissue detection and tile storage."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Model, data, optimisation and the feature bank of each train segment."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    """PCA-whitening and k-means / RCC on each epoch's features."""
    loop: LoopConfig = field(default_factory=LoopConfig)
    """How many epochs, what to keep."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """k-NN and linear-probe evaluation against random init."""
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    """Writing encoder features for a store."""
    curate: CurateConfig = field(default_factory=CurateConfig)
    """Diverse per-cluster selection of tiles."""
    report: ReportConfig = field(default_factory=ReportConfig)
    """The static HTML report: run page, cluster atlas, slide maps, artefact flags."""
    executor_tile: ExecutorConfig = field(default_factory=ExecutorConfig)
    """Where tiling array elements run (one slide per element)."""
    executor_train: ExecutorConfig = field(default_factory=ExecutorConfig)
    """Where train segments run: nodes × tasks_per_node DDP processes (one per GPU)."""
    executor_cluster: ExecutorConfig = field(default_factory=ExecutorConfig)
    """Where clustering runs: tasks_per_node MPI ranks (any number, independent of training)."""
