"""DeepCluster's sampler, distributed: every non-empty cluster drawn equally often per epoch.

An epoch is a list of n draws (n = samples_per_epoch, default the labelled tiles) defined point by
point: global position p → slot σ(p) (a pseudo-random permutation of [0, n), see
``permutation``) → (cluster c, draw j). The C non-empty clusters get n // C slots each, n % C
randomly chosen ones one more. Draw j < |c| is member τ_c(j) of c (τ_c a random permutation of
c's members: a small cluster is drawn whole, a large one a random subset without replacement);
draws past |c| repeat a member drawn at random (padding). Rank r takes global positions
r, r + W, r + 2W, … (W = world size) and computes only those, so:

- each rank's plan costs O(N / W) time and memory beyond the label array — no rank builds the
  global list — and the draws at a global position do not depend on W;
- ranks are disjoint by position and, after any number of steps, together have consumed exactly
  the global prefix [0, steps × batch × W) (without a shard window, below): resuming at a local
  position is exact;
- unassigned tiles (label -1) are never drawn (to exclude tiles, set their label to -1), and empty
  clusters simply do not exist here (DeepCluster v1 crashed on them);
- a tile is *owned* by its non-padding draw only, so ranks write disjoint feature-bank rows. (The
  < W positions past the last full round of ranks are not drawn; a tile whose own draw falls there
  keeps its previous bank row, like any unvisited tile.)

With ``shard_window`` a rank reads its own draws in another order: grouped by windows of that
many shards (random groups, in random order, the same on every rank; random order within), so a
reader keeps a window's shards open. The rank's draws, seeds and owners are unchanged — only their
order, so a rank's prefix is no longer a global prefix: rows written so far are the sum over ranks
of ``owned``. Resuming at a local position stays exact (the order is a function of the epoch).

The members of a cluster are found without sorting all N tiles: per-chunk cluster counts (once per
label array) locate the chunk holding a cluster's m-th member, and only that chunk is sorted.

``set_labels`` swaps the label array in place: the next ``__iter__`` draws from it, so neither the
sampler nor the DataLoader holding it is rebuilt.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from dcssl.train.augment import mix_seed, sample_seeds, splitmix64
from dcssl.train.permutation import keys, permute

__all__ = ["UniformClusterSampler", "ClusterIndex", "EpochDraws", "epoch_plan", "labels_digest"]

_CHUNK = 1 << 16  # positions turned into Python tuples at a time
_LABEL_CHUNK = 1 << 20  # tiles per chunk of the cluster index


def labels_digest(labels: np.ndarray) -> str:
    """A short fingerprint of a label array (resuming on other labels is refused)."""
    return hashlib.blake2b(np.ascontiguousarray(labels).view(np.uint8), digest_size=12).hexdigest()


class ClusterIndex:
    """The members of each non-empty cluster, in tile order, addressable by rank within it."""

    def __init__(self, labels: np.ndarray, chunk: int = _LABEL_CHUNK):
        self.labels, self.chunk = labels, chunk
        top = int(labels.max()) if labels.size else -1
        # tiles per (chunk, label + 1): column 0 counts the unassigned (any negative label)
        per_chunk = [np.bincount(np.maximum(part, -1) + 1, minlength=top + 2) for part in self._parts()]
        before = np.zeros((len(per_chunk) + 1, top + 2), dtype=np.int64)
        np.cumsum(per_chunk, axis=0, out=before[1:])
        if top < 0 or not before[-1, 1:].any():
            raise ValueError("every tile is unassigned (label -1): nothing to train on")
        self.values = np.flatnonzero(before[-1, 1:])  # the label of each non-empty cluster
        self.counts = before[-1, self.values + 1]
        # before[b, c] = members of cluster c in chunks < b (one row per cluster, for gathers)
        self.before = np.ascontiguousarray(before[:, self.values + 1].T)
        # cluster id per label value; the last entry is what any negative label (-1) maps to
        self._ids = np.full(top + 2, self.values.size, dtype=np.int64)
        self._ids[self.values] = np.arange(self.values.size)
        self._dtype = np.uint16 if self.values.size < np.iinfo(np.uint16).max else np.int64

    def _parts(self) -> Iterator[np.ndarray]:
        for lo in range(0, self.labels.size, self.chunk):
            yield self.labels[lo : lo + self.chunk]

    @property
    def size(self) -> int:
        return int(self.values.size)

    def _chunk_ids(self, b: int) -> np.ndarray:
        part = self.labels[b * self.chunk : (b + 1) * self.chunk]
        return self._ids[np.maximum(part, -1)].astype(self._dtype)  # radix sort for uint16

    def _chunk_of(self, cluster: np.ndarray, rank: np.ndarray) -> np.ndarray:
        """The chunk holding each member: the last b with before[c, b] ≤ rank (binary search)."""
        width = self.before.shape[1]
        flat, base = self.before.ravel(), cluster * width
        block = np.zeros(cluster.size, dtype=np.int64)
        step = 1 << int(width - 1).bit_length()
        while step:
            probe = np.minimum(block + step, width - 1)
            block = np.where(flat[base + probe] <= rank, probe, block)
            step >>= 1
        return block

    def select(self, cluster: np.ndarray, rank: np.ndarray) -> np.ndarray:
        """Tile index of member ``rank`` (0-based, in tile order) of each ``cluster``."""
        block = self._chunk_of(cluster, rank)
        n_chunks = self.before.shape[1] - 1
        dtype = np.uint16 if n_chunks < np.iinfo(np.uint16).max else np.int64
        order = np.argsort(block.astype(dtype), kind="stable")  # radix sort: grouped by chunk
        bounds = np.searchsorted(block[order], np.arange(n_chunks + 1))
        out = np.empty(cluster.size, dtype=np.int64)
        for b in range(n_chunks):
            mine = order[bounds[b] : bounds[b + 1]]
            if mine.size:
                ids = self._chunk_ids(b)
                starts = np.r_[0, np.cumsum(np.bincount(ids, minlength=self.size + 1))]
                c = cluster[mine]
                local = starts[c] + rank[mine] - self.before[c, b]
                out[mine] = b * self.chunk + np.argsort(ids, kind="stable")[local]
        return out


class EpochDraws:
    """The draws of one epoch, computable at any set of global positions (see module docstring)."""

    def __init__(self, index: ClusterIndex, seed: int, epoch: int, n_samples: int = 0):
        self.index, self.seed, self.epoch = index, seed, epoch
        self.n = int(n_samples) or int(index.counts.sum())
        # slots laid out cluster by cluster in a random order; the first n % C get one more
        self.base, self.extra = divmod(self.n, index.size)
        self.layout = np.random.default_rng(mix_seed(seed, epoch, 0x5A3)).permutation(index.size)
        place = np.empty(index.size, dtype=np.int64)
        place[self.layout] = np.arange(index.size)
        self.quota = self.base + (place < self.extra)
        self.slot_start = place * self.base + np.minimum(place, self.extra)
        self.key = int(keys(seed, epoch, 0x9E1, np.zeros(1))[0])
        self.cluster_keys = keys(seed, epoch, 0xC1A, np.arange(index.size))
        self.pad_key = mix_seed(seed, epoch, 0x9AD)

    def _cluster_of(self, slot: np.ndarray) -> np.ndarray:
        """The cluster a slot belongs to: arithmetic on the layout, no search."""
        wide = self.extra * (self.base + 1)  # slots of the clusters with one more
        place = np.where(
            slot < wide, slot // (self.base + 1), self.extra + (slot - wide) // max(self.base, 1)
        )
        return self.layout[place]

    def at(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(tile index, owner) of the draws at global ``positions`` (each in [0, n))."""
        cluster = np.empty(positions.size, dtype=np.int64)
        rank, owner = np.empty_like(cluster), np.empty(positions.size, dtype=bool)
        for lo in range(0, positions.size, _LABEL_CHUNK):  # bounded transients, one select
            part = slice(lo, lo + _LABEL_CHUNK)
            cluster[part], rank[part], owner[part] = self._members(positions[part])
        return self.index.select(cluster, rank), owner

    def _members(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(cluster, rank of the member within it, owner) at ``positions``."""
        slot = permute(positions, self.n, self.key).astype(np.int64)
        cluster = self._cluster_of(slot)
        rank = slot - self.slot_start[cluster]  # the draw j within the cluster
        owner = rank < self.index.counts[cluster]
        counts = self.index.counts.astype(np.uint64)
        mine = cluster[owner]
        rank[owner] = permute(rank[owner], counts, self.cluster_keys, group=mine)
        pad = ~owner
        with np.errstate(over="ignore"):
            hashed = splitmix64(slot[pad].astype(np.uint64) ^ np.uint64(self.pad_key))
        rank[pad] = (hashed % counts[cluster[pad]]).astype(np.int64)
        return cluster, rank, owner


def epoch_plan(labels: np.ndarray, seed: int, epoch: int, n_samples: int = 0) -> np.ndarray:
    """The whole epoch's tile list (global positions 0 … n-1) — what all ranks draw together."""
    draws = EpochDraws(ClusterIndex(np.asarray(labels)), seed, epoch, n_samples)
    return draws.at(np.arange(draws.n, dtype=np.int64))[0]


class UniformClusterSampler(Sampler):
    """Yields ``(tile index, sample seed, owner)`` for this rank, from ``start`` to the epoch's end.

    ``owner`` is True at a tile's non-padding draw (see module docstring).
    """

    def __init__(
        self,
        labels: np.ndarray,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        samples_per_epoch: int = 0,
        shard_offsets: np.ndarray | None = None,
        shard_window: int = 0,
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of size {world_size}")
        if shard_window < 0 or (shard_window and shard_offsets is None):
            raise ValueError("shard_window must be ≥ 0 and needs shard_offsets")
        self.rank, self.world_size = rank, world_size
        self.shard_offsets, self.shard_window = shard_offsets, shard_window
        self.seed, self.samples_per_epoch = seed, samples_per_epoch
        self.epoch, self.start = 0, 0
        self._plan: tuple[np.ndarray, np.ndarray] | None = None
        self._draws: EpochDraws | None = None
        self.set_labels(labels)

    # ------------------------------------------------------------------ state
    def set_labels(self, labels: np.ndarray) -> None:
        """Draw from ``labels`` (int, one per global tile index, -1 = unassigned) from now on."""
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
        self.labels = labels
        self.n_labelled = int((labels >= 0).sum())
        self._index: ClusterIndex | None = None
        self._plan = self._draws = None

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Move to ``epoch``; the next iteration begins at local position ``start``."""
        if epoch != self.epoch:
            self._plan = self._draws = None
        self.epoch = epoch
        self.set_start(start)

    def set_start(self, start: int) -> None:
        if not 0 <= start <= self.local_len:
            raise ValueError(f"start {start} is outside this rank's epoch [0, {self.local_len}]")
        self.start = start

    # ------------------------------------------------------------------ plan
    def draws(self) -> EpochDraws:
        """The current epoch's draws (at any global position), cached."""
        if self._draws is None:
            if self._index is None:
                self._index = ClusterIndex(self.labels)
            self._draws = EpochDraws(self._index, self.seed, self.epoch, self.samples_per_epoch)
        return self._draws

    def plan(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(tile, owner, global position) of this rank's draws in the order it reads them, cached."""
        if self._plan is None:
            positions = np.arange(self.local_len, dtype=np.int64) * self.world_size + self.rank
            tiles, owners = self.draws().at(positions)
            if self.shard_window:
                order = self._window_order(tiles)
                tiles, owners, positions = tiles[order], owners[order], positions[order]
            self._plan = (tiles, owners, positions)
        return self._plan

    def _window_order(self, tiles: np.ndarray) -> np.ndarray:
        """Reading order grouped by windows of ``shard_window`` shards (random groups, in random
        order, the same on every rank); within a window the draws keep their random order."""
        n_shards = self.shard_offsets.size - 1
        rng = np.random.default_rng(mix_seed(self.seed, self.epoch, 0x51D))
        window = np.empty(n_shards, dtype=np.int64)
        window[rng.permutation(n_shards)] = np.arange(n_shards) // self.shard_window
        shard = np.searchsorted(self.shard_offsets, tiles, side="right") - 1
        dtype = np.uint16 if n_shards // self.shard_window < np.iinfo(np.uint16).max else np.int64
        return np.argsort(window[shard].astype(dtype), kind="stable")  # a radix sort for uint16

    @property
    def local_len(self) -> int:
        """Samples this rank draws in the whole epoch (equal on every rank)."""
        return (self.samples_per_epoch or self.n_labelled) // self.world_size

    def __len__(self) -> int:
        return self.local_len - self.start

    def __iter__(self) -> Iterator[tuple[int, int, bool]]:
        tiles, owners, positions = self.plan()
        for lo in range(self.start, self.local_len, _CHUNK):  # bounded memory at 10⁷ tiles
            hi = min(lo + _CHUNK, self.local_len)
            seeds = sample_seeds(self.seed, self.epoch, positions[lo:hi])
            yield from zip(tiles[lo:hi].tolist(), seeds.tolist(), owners[lo:hi].tolist())

    def owned(self, local_consumed: int) -> int:
        """Feature-bank rows this rank writes in its first ``local_consumed`` samples (its owner
        draws); summed over the ranks, the rows the epoch has written so far."""
        return int(self.plan()[1][:local_consumed].sum())
