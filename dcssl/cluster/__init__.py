"""Clustering of the feature bank: MPI-sharded PCA-whitening, k-means, RCC, NMI.

Small numpy-in/numpy-out functions take the communicator (``comm``; None = one process, no MPI)
and run unchanged on 1 or R ranks; ``job.run_cluster`` is the per-epoch job around them.
"""

from .config import ClusterConfig, RCCConfig
from .exact import shard_rows
from .kmeans import assign, assign_all, kmeans
from .nmi import nmi
from .pca import PCA, pca_fit, pca_transform
from .rcc import rcc

__all__ = [
    "ClusterConfig",
    "RCCConfig",
    "shard_rows",
    "assign",
    "assign_all",
    "kmeans",
    "nmi",
    "PCA",
    "pca_fit",
    "pca_transform",
    "rcc",
]
