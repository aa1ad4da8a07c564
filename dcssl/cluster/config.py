"""The ``cluster`` section of a run's config: how each epoch's features become pseudo-labels."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

__all__ = ["ClusterConfig", "RCCConfig"]


@dataclass
class RCCConfig:
    """Robust Continuous Clustering (Shah & Koltun 2017), used when ``method: rcc``.

    RCC reads distances on a kNN graph, so the job never whitens its PCA (``cluster.whiten`` is
    for k-means): whitening lifts noise-only directions to unit variance and shatters clusters.
    The number of clusters is not set: it follows from the data through δ, λ and μ (see README).
    """

    sample: int = 100_000
    """Points RCC optimises (a seeded global sample); every point is then assigned to the nearest
    cluster representative. 0: all points (only sensible for small banks)."""
    knn: int = 10
    """Neighbours per point for the mutual-kNN graph (the paper's k = 10); MST edges keep it connected.
    More neighbours: more edges between groups, so fewer, larger clusters."""
    dim: int = 32
    """RCC runs on the sample's top ``dim`` principal components (each solve costs ∝ dim); 0: all.
    Fewer dimensions: less noise in the kNN graph, usually fewer clusters."""
    iterations: int = 100
    """Maximum outer iterations (each: line-process update + one sparse linear solve)."""
    mu_every: int = 4
    """Graduated non-convexity: μ is halved every this many iterations (sooner when the objective
    settles) until it drops below δ/2 (the paper's 4)."""
    tol: float = 0.1
    """A μ level ends early, and at μ's floor the run stops, once the objective (on the unit-RMS
    data) changes by less than this, absolute (the authors' 0.1). Larger: fewer iterations per
    μ level, so a shorter non-convex stage and fewer, larger clusters."""
    cg_tol: float = 1e-4
    """Relative residual at which each conjugate-gradient solve stops."""
    cg_iterations: int = 100
    """Maximum conjugate-gradient iterations per solve (warm-started from the last solution)."""
    min_size: int = 1
    """Clusters with fewer sample points are dropped; their points go to the nearest kept one."""

    def __post_init__(self) -> None:
        for name in ("knn", "iterations", "mu_every", "cg_iterations", "min_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("sample", "dim"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if not self.tol > 0:
            raise ValueError(f"tol must be > 0, got {self.tol}")
        if not 0 < self.cg_tol < 1:
            raise ValueError(f"cg_tol must lie in (0, 1), got {self.cg_tol}")


@dataclass
class ClusterConfig:
    """Per-epoch clustering of the feature bank (MPI ranks, each on a contiguous row range)."""

    method: Literal["kmeans", "rcc"] = "kmeans"
    """kmeans: Lloyd with k clusters; rcc: Robust Continuous Clustering (k emerges)."""
    k: int = 1000
    """Number of k-means clusters (DeepCluster used 10 000 on ImageNet)."""
    extra_k: list[int] = field(default_factory=list)
    """More clustering heads (DeepCluster-v2 / SwAV: e.g. [100, 200] beside k = 50): one more
    k-means per entry on the same PCA-whitened features, each head its own classifier in the
    model; the loss is the mean of the heads' cross-entropies. NMI, the sampler and the report
    use the primary head (``k``). [] (default): one head. k-means only."""
    pca_dim: int = 256
    """PCA output dimension (clamped to the feature dimension); 0 skips PCA."""
    whiten: bool = True
    """Divide each principal direction by its standard deviation (DeepCluster's whitening).
    k-means only: for ``method: rcc`` the PCA is never whitened."""
    l2_normalize: bool = True
    """L2-normalise rows after PCA (spherical geometry, as DeepCluster)."""
    iterations: int = 20
    """Maximum Lloyd iterations."""
    tol: float = 0.0
    """Stop early when the inertia improves by less than this fraction (0: always run all)."""
    init: Literal["auto", "kmeans++", "kmeans||", "random"] = "auto"
    """Initial centroids: greedy k-means++ on a sample (rank 0), k-means|| (Bahmani et al. 2012:
    5 sampling rounds over a sample spread over the ranks, checkpointed after each round, then a
    weighted greedy k-means++ over the drawn candidates; no rounds where that reduction affords
    the whole sample: k ≤ 2,400 at d = 256, ≤ 6,500 at d = 32), or k random rows. auto:
    kmeans++ while its estimated cost on rank 0 (∝ init_trials·k²·log k·20·d) stays ≲ 1 min (k ≤ 1,100 at d = 256, ≤ 2,200 at d = 64), kmeans|| beyond (k-means++ takes
    hours at k = 10,000; k-means|| seconds)."""
    init_sample: int = 0
    """Rows the init samples from (0: max(20·k, 10 000); kmeans|| spreads them over the ranks
    and takes 10·k where its rounds on 20·k would cost > 10¹² flop, e.g. k = 10,000 at d = 256)."""
    init_trials: int = 5
    """Restarts of the init, each refined by ``init_refine`` Lloyd iterations on the sample; the
    lowest sample inertia starts the full run. kmeans++: whole runs (part of auto's cost
    estimate); kmeans||: reductions of the same candidates, spread over the ranks, as many as fit
    ≈ 1.1·10¹² flop of reductions (e.g. 2 at k = 10,000, d = 256)."""
    init_refine: int = 20
    """Lloyd iterations on the sample after seeding (per k-means++ restart; 0: none)."""
    groups: int = 0
    """Centroid groups for pruning (Yinyang k-means): a row keeps one float16 lower bound per
    group (2 bytes each) and rescans only the groups whose bound fails. 0: k/10 groups capped
    at pca_dim/5 (bounds ≤ 10 % of a float32 row) from k = 2,000, below that 1; 1: a single
    bound (Hamerly + Elkan's centroid gaps). Never changes a label."""
    seed: int = 0
    """Base seed; the epoch is added, so every epoch draws a new initialisation (as DeepCluster)."""
    seed_per_epoch: bool = True
    """Add the epoch to the seed. Off: every epoch uses ``seed`` unchanged."""
    block_rows: int = 8192
    """Rows per block: shards are whole blocks and the PCA's sums are made exact per block, which
    is what makes the PCA bit-identical for any rank count (k-means is exact per row). Ranks
    differ by ≤ one block of work. Part of the checkpoint's fingerprint: changing it restarts
    an unfinished epoch."""
    backend: Literal["auto", "numpy", "torch", "cuda"] = "auto"
    """Assignment matrix products: numpy (OpenBLAS), torch (MKL), cuda (GPU); auto: cuda if a GPU
    is visible, else numpy. Labels are the exact nearest centroids on every backend (float64
    settles what float32 cannot), so they are identical across rank counts and backends."""
    threads: int = 0
    """BLAS threads per rank; 0: this rank's share of the node's cores."""
    checkpoint: bool = True
    """Save the state after every iteration (rank 0, atomic) so a re-run resumes there."""
    keep_checkpoints: int = 2
    """Checkpoints kept per epoch (older ones are deleted; a corrupt newest falls back)."""
    keep_checkpoints_after: bool = False
    """Keep the epoch's checkpoint folder once its labels are complete (default: delete it)."""
    warn_largest_share: float = 0.5
    """Warn (log, stats, metrics, status) when one cluster holds more than this share of the rows."""
    warn_clusters_fraction: float = 0.5
    """Warn when the clusters number at least this fraction of the rows (near-singletons)."""
    rcc: RCCConfig = field(default_factory=RCCConfig)
    """Settings for ``method: rcc``."""

    def __post_init__(self) -> None:
        for name in ("k", "iterations", "block_rows", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        for name in ("pca_dim", "init_sample", "threads", "seed", "init_trials", "init_refine", "groups"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if any(not isinstance(k, int) or isinstance(k, bool) or k < 2 for k in self.extra_k):
            raise ValueError(f"extra_k must be a list of integers ≥ 2 (e.g. [100, 200]), got {self.extra_k}")
        if self.extra_k and self.method != "kmeans":
            raise ValueError(
                f"extra_k needs method: kmeans (RCC finds its own k), got method {self.method!r}"
            )
        if not 0 <= self.tol < 1:
            raise ValueError(f"tol must lie in [0, 1), got {self.tol}")
        for name in ("warn_largest_share", "warn_clusters_fraction"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie in (0, 1], got {getattr(self, name)}")
