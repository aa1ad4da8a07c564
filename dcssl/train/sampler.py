"""DeepCluster's sampler, distributed: every non-empty cluster drawn equally often per epoch.

The epoch's *global* sample list is a pure function of (labels, seed, epoch) — every rank builds
the same list with no communication — and rank r takes global positions r, r + W, r + 2W, …
(W = world size). Hence:

- ranks are disjoint by position and, after any number of steps, together have consumed exactly
  the global prefix [0, steps × batch × W): resuming at a local position is exact;
- unassigned tiles (label -1) are never drawn, and empty clusters simply do not exist here
  (DeepCluster v1 crashed on them);
- a tile drawn twice in an epoch (small clusters are padded by repeats) is *owned* by its first
  position only, so ranks write disjoint feature-bank rows.

``set_labels`` swaps the label array in place: the next ``__iter__`` draws from it, so neither the
sampler nor the DataLoader holding it is rebuilt.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from dcssl.train.augment import mix_seed, sample_seeds

__all__ = ["UniformClusterSampler", "epoch_plan", "labels_digest"]

_CHUNK = 1 << 16  # positions turned into Python tuples at a time


def labels_digest(labels: np.ndarray) -> str:
    """A short fingerprint of a label array (resuming on other labels is refused)."""
    return hashlib.blake2b(np.ascontiguousarray(labels).view(np.uint8), digest_size=12).hexdigest()


def epoch_plan(labels: np.ndarray, seed: int, epoch: int, n_samples: int = 0) -> np.ndarray:
    """Global list of tile indices for one epoch, uniform over the non-empty clusters.

    Each cluster gets ceil(n / C) draws: all of its members in random order when it has that many
    or fewer (plus repeats drawn with replacement to fill its quota), else a random subset. This
    keeps DeepCluster's balance while visiting as many distinct tiles as possible (v1 drew small
    clusters entirely with replacement). The list is shuffled and cut to n (default: the number of
    labelled tiles).
    """
    labels = np.asarray(labels)
    valid = np.flatnonzero(labels >= 0)
    if valid.size == 0:
        raise ValueError("every tile is unassigned (label -1): nothing to train on")
    rng = np.random.default_rng(mix_seed(seed, epoch, 0x5A3))
    shuffled = valid[rng.permutation(valid.size)]
    # a stable sort by cluster of a random permutation: grouped by cluster, random within each
    members = shuffled[np.argsort(labels[shuffled], kind="stable")]
    _, starts, counts = np.unique(labels[members], return_index=True, return_counts=True)
    n = int(n_samples) or int(valid.size)
    quota = -(-n // len(counts))
    take = np.minimum(counts, quota)
    ends = np.cumsum(take)
    first = np.repeat(starts, take) + np.arange(ends[-1]) - np.repeat(ends - take, take)
    extra = quota - take
    pad_cluster = np.repeat(np.arange(len(counts)), extra)
    pad = starts[pad_cluster] + (rng.random(pad_cluster.size) * counts[pad_cluster]).astype(np.int64)
    chosen = members[np.concatenate([first, pad])]
    rng.shuffle(chosen)
    return chosen[:n]


class UniformClusterSampler(Sampler):
    """Yields ``(tile index, sample seed, owner)`` for this rank, from ``start`` to the epoch's end.

    ``owner`` is True at a tile's first position in the global list (see module docstring).
    """

    def __init__(
        self,
        labels: np.ndarray,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        samples_per_epoch: int = 0,
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of size {world_size}")
        self.rank, self.world_size = rank, world_size
        self.seed, self.samples_per_epoch = seed, samples_per_epoch
        self.epoch, self.start = 0, 0
        self._plan: tuple[np.ndarray, np.ndarray] | None = None
        self.set_labels(labels)

    # ------------------------------------------------------------------ state
    def set_labels(self, labels: np.ndarray) -> None:
        """Draw from ``labels`` (int, one per global tile index, -1 = unassigned) from now on."""
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
        self.labels = labels
        self.n_labelled = int((labels >= 0).sum())
        self._plan = None

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Move to ``epoch``; the next iteration begins at local position ``start``."""
        if epoch != self.epoch:
            self._plan = None
        self.epoch = epoch
        self.set_start(start)

    def set_start(self, start: int) -> None:
        if not 0 <= start <= self.local_len:
            raise ValueError(f"start {start} is outside this rank's epoch [0, {self.local_len}]")
        self.start = start

    # ------------------------------------------------------------------ plan
    def plan(self) -> tuple[np.ndarray, np.ndarray]:
        """(global tile list, first-occurrence mask) of the current epoch, cached."""
        if self._plan is None:
            order = epoch_plan(self.labels, self.seed, self.epoch, self.samples_per_epoch)
            positions = np.arange(order.size, dtype=np.int64)
            first_at = np.full(self.labels.size, order.size, dtype=np.int64)
            np.minimum.at(first_at, order, positions)  # O(n), no sort
            self._plan = (order, first_at[order] == positions)
        return self._plan

    @property
    def local_len(self) -> int:
        """Samples this rank draws in the whole epoch (equal on every rank)."""
        return (self.samples_per_epoch or self.n_labelled) // self.world_size

    def __len__(self) -> int:
        return self.local_len - self.start

    def __iter__(self) -> Iterator[tuple[int, int, bool]]:
        order, first = self.plan()
        for lo in range(self.start, self.local_len, _CHUNK):  # bounded memory at 10⁷ tiles
            local = np.arange(lo, min(lo + _CHUNK, self.local_len), dtype=np.int64)
            positions = local * self.world_size + self.rank
            seeds = sample_seeds(self.seed, self.epoch, positions)
            tiles, owners = order[positions], first[positions]
            yield from zip(tiles.tolist(), seeds.tolist(), owners.tolist())

    def visited(self, local_consumed: int) -> int:
        """Distinct tiles among the first ``local_consumed`` samples of every rank."""
        _, first = self.plan()
        return int(first[: local_consumed * self.world_size].sum())
