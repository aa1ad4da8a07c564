"""The ``eval`` section: frozen-encoder k-NN and linear probe, export, embeddings, curation.

These stages read the run's ``train`` section to rebuild the network and their own sections
(``eval``, ``embed``, ``curate``) for everything else; ``section.key=value`` overrides apply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["EvalConfig", "EmbedConfig", "CurateConfig"]


@dataclass
class EvalConfig:
    """k-NN and linear probe on frozen features, pretrained against random init."""

    fractions: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0])
    """Fractions of the labelled reference (train) set used, stratified per class and nested
    (the 1 % subset lies inside the 10 % subset); every class keeps at least one example."""
    knn_k: int = 20
    """Neighbours voting in the k-NN classifier."""
    knn_temperature: float = 0.07
    """Votes are weighted by exp(cosine similarity / temperature) (Wu et al. 2018)."""
    linear_weight_decays: list[float] = field(default_factory=lambda: [1e-4, 1e-3, 1e-2, 1e-1])
    """L2 penalties tried for the linear probe; the best on a stratified 20 % hold-out of the
    reference set is refitted on all of it."""
    linear_max_iter: int = 100
    """L-BFGS iterations of the full-batch multinomial logistic regression."""
    layer: Literal["trunk", "embedding"] = "trunk"
    """Which features are evaluated: the trunk's pooled output (what `export` ships) or the
    L2-normalised projection that DeepCluster clusters."""
    size: int = 0
    """Side in pixels tiles are resized to before the encoder; 0 = train.augment.size."""
    raw_pixels: bool = True
    """Also score k-NN on raw pixels (the floor any encoder must clear)."""
    raw_size: int = 0
    """Side tiles are resized to for the raw-pixel baseline; 0 = their own side, capped at 64."""
    batch_size: int = 256
    """Tiles per forward pass."""
    test_fraction: float = 0.3
    """For a labelled store without train/test shards: the stratified share held out as queries."""
    seed: int = 0
    """Seeds the label-fraction subsets and the store split. (The random-init encoder is built
    with train.seed: exactly the weights training started from.)"""
    threads: int = 0
    """torch threads; 0 = leave torch's default (OMP_NUM_THREADS)."""

    def __post_init__(self) -> None:
        if not self.fractions or any(not 0.0 < f <= 1.0 for f in self.fractions):
            raise ValueError(f"fractions must be a non-empty list in (0, 1], got {self.fractions}")
        if self.knn_k < 1 or self.knn_temperature <= 0:
            raise ValueError("knn_k must be ≥ 1 and knn_temperature > 0")
        if not self.linear_weight_decays or min(self.linear_weight_decays) < 0:
            raise ValueError("linear_weight_decays must be a non-empty list of values ≥ 0")
        if self.linear_max_iter < 1 or self.batch_size < 1 or min(self.size, self.raw_size, self.threads) < 0:
            raise ValueError("linear_max_iter, batch_size must be ≥ 1; size, raw_size, threads ≥ 0")
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must lie in (0, 1), got {self.test_fraction}")


@dataclass
class EmbedConfig:
    """Encoder features for every tile of a store, written to one HDF5 file by global index."""

    layer: Literal["trunk", "embedding"] = "trunk"
    """trunk: the pooled trunk output; embedding: the L2-normalised DeepCluster projection."""
    dtype: Literal["float32", "float16"] = "float32"
    """Storage type of the features dataset."""
    size: int = 0
    """Side in pixels tiles are resized to; 0 = train.augment.size."""
    batch_size: int = 256
    """Tiles per forward pass."""
    chunk_tiles: int = 8192
    """Tiles per resumable chunk: a re-run after a crash restarts at the first unfinished one."""
    threads: int = 0
    """torch threads; 0 = leave torch's default (OMP_NUM_THREADS)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.chunk_tiles < 1 or self.size < 0 or self.threads < 0:
            raise ValueError("batch_size and chunk_tiles must be ≥ 1; size and threads ≥ 0")


@dataclass
class CurateConfig:
    """DeepCluster++ diverse sampling (as used to build STARC-9): per cluster, equal-frequency
    bins of distance to the centroid, the same number of tiles drawn from each bin."""

    per_cluster: int = 100
    """Tiles picked per cluster (all of a cluster's tiles when it has fewer)."""
    bins: int = 10
    """Equal-frequency distance bins per cluster (fewer when a cluster has fewer tiles)."""
    epoch: int = -1
    """Clustering epoch whose labels and features are used; -1 = the newest with both."""
    seed: int = 0
    """Seeds the draw inside each bin."""
    copy_tiles: bool = True
    """Also copy the chosen tiles into RUN/curated/store/ (a real tile store every stage reads);
    false writes only the selection manifest."""

    def __post_init__(self) -> None:
        if self.per_cluster < 1 or self.bins < 1:
            raise ValueError("per_cluster and bins must be ≥ 1")
        if self.epoch < -1:
            raise ValueError(f"epoch must be ≥ 0 or -1 (newest), got {self.epoch}")
