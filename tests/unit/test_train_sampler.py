"""The distributed uniform-over-clusters sampler: balance, determinism, disjoint ranks, exact
resume, label swaps without a rebuild."""

from __future__ import annotations

import numpy as np
import pytest

from dcssl.train.config import DataConfig
from dcssl.train.permutation import permute
from dcssl.train.sampler import ClusterIndex, EpochDraws, UniformClusterSampler, epoch_plan


def _skewed_labels(seed: int = 0) -> np.ndarray:
    """Clusters of 600, 150, 40 and 7 tiles, empty clusters 1 and 5, and 200 unassigned (-1)."""
    labels = np.concatenate(
        [np.full(600, 0), np.full(150, 2), np.full(40, 3), np.full(7, 4), np.full(200, -1)]
    ).astype(np.int32)
    return np.random.default_rng(seed).permutation(labels)


def _drawn(sampler: UniformClusterSampler) -> list[tuple[int, int, bool]]:
    return list(iter(sampler))


def test_every_nonempty_cluster_is_drawn_equally_often_and_unassigned_never():
    labels = _skewed_labels()
    order = epoch_plan(labels, seed=3, epoch=1)
    assert order.size == int((labels >= 0).sum())  # DeepCluster: N samples per epoch
    assert (labels[order] >= 0).all()
    counts = np.bincount(labels[order], minlength=6)
    assert counts[1] == counts[5] == 0  # empty clusters do not crash the sampler, and are skipped
    drawn = counts[[0, 2, 3, 4]]
    assert drawn.max() - drawn.min() <= drawn.max() * 0.02 + 2, drawn  # uniform up to the cut
    # small clusters are drawn whole before any repeat, large ones without replacement
    for cluster in (3, 4):
        assert set(order[labels[order] == cluster]) == set(np.flatnonzero(labels == cluster))
    big = order[labels[order] == 0]
    assert np.unique(big).size == big.size


def test_plan_is_a_function_of_seed_epoch_and_labels():
    labels = _skewed_labels()
    a = epoch_plan(labels, seed=7, epoch=4)
    assert np.array_equal(a, epoch_plan(labels.copy(), seed=7, epoch=4))
    assert not np.array_equal(a, epoch_plan(labels, seed=7, epoch=5))
    assert not np.array_equal(a, epoch_plan(labels, seed=8, epoch=4))


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_are_disjoint_and_together_form_the_single_rank_epoch(world):
    labels = _skewed_labels()
    single = _drawn(UniformClusterSampler(labels, seed=1, world_size=1))
    ranks = [UniformClusterSampler(labels, rank=r, world_size=world, seed=1) for r in range(world)]
    draws = [_drawn(s) for s in ranks]
    assert len({len(d) for d in draws}) == 1  # equal lengths: DDP steps stay in lockstep
    interleaved = [d[i] for i in range(len(draws[0])) for d in draws]
    # the world size does not change what is drawn (tile, augmentation seed) at a global position
    assert interleaved == single[: len(interleaved)]
    owned = [{t for t, _, owner in d if owner} for d in draws]
    assert sum(len(o) for o in owned) == len(set().union(*owned))  # no row owned twice
    # every drawn tile has an owner, unless its own draw is among the < W undrawn last positions
    tail = {t for t, _, owner in single[len(interleaved) :] if owner}
    assert {t for t, _, _ in interleaved} - set().union(*owned) <= tail


def test_resume_at_a_local_position_yields_exactly_the_rest():
    labels = _skewed_labels()
    sampler = UniformClusterSampler(labels, rank=1, world_size=2, seed=5)
    sampler.set_epoch(3)
    full = _drawn(sampler)
    sampler.set_epoch(3, start=137)
    assert len(sampler) == len(full) - 137
    assert _drawn(sampler) == full[137:]
    fresh = UniformClusterSampler(labels, rank=1, world_size=2, seed=5)
    fresh.set_epoch(3, start=137)  # a new process after a requeue
    assert _drawn(fresh) == full[137:]
    with pytest.raises(ValueError, match="outside"):
        sampler.set_start(len(full) + 1)


@pytest.mark.parametrize("consumed", [0, 100, 265])
def test_owned_counts_distinct_rows_and_sums_over_ranks(consumed):
    labels = _skewed_labels()
    samplers = [UniformClusterSampler(labels, rank=r, world_size=3, seed=2) for r in range(3)]
    prefix = [d for s in samplers for d in _drawn(s)[:consumed]]
    owned = [t for t, _, owner in prefix if owner]
    assert len(owned) == len(set(owned))  # owner draws are distinct tiles, across ranks too
    assert sum(s.owned(consumed) for s in samplers) == len(owned)


def _windowed(labels, rank, world, offsets, window=3):
    return UniformClusterSampler(
        labels, rank=rank, world_size=world, seed=6, shard_offsets=offsets, shard_window=window
    )


def _blocks(shards: list[int], width: int) -> list[set[int]]:
    """Greedy runs of consecutive draws touching at most ``width`` shards."""
    blocks: list[set[int]] = [set()]
    for shard in shards:
        if shard not in blocks[-1] and len(blocks[-1]) == width:
            blocks.append(set())
        blocks[-1].add(shard)
    return blocks


@pytest.mark.parametrize("world", [1, 2])
def test_shard_windows_reorder_a_rank_without_changing_its_draws(world):
    labels = _skewed_labels()
    offsets = np.r_[0, np.cumsum(np.full(20, labels.size // 20)), labels.size]  # 21 shards
    for rank in range(world):
        plain = _drawn(UniformClusterSampler(labels, rank=rank, world_size=world, seed=6))
        windowed = UniformClusterSampler(
            labels, rank=rank, world_size=world, seed=6, shard_offsets=offsets, shard_window=3
        )
        grouped = _drawn(windowed)
        assert grouped != plain and sorted(grouped) == sorted(plain)  # same draws, other order
        shards = (np.searchsorted(offsets, [t for t, _, _ in grouped], side="right") - 1).tolist()
        blocks = _blocks(shards, 3)  # read window by window: 7 windows of 3 shards, each once
        assert len(blocks) == 7 and set().union(*blocks) == set(range(21))
        plain_shards = np.searchsorted(offsets, [t for t, _, _ in plain], side="right") - 1
        assert len(_blocks(plain_shards.tolist(), 3)) > 50  # without windows: all over the store
        windowed.set_epoch(windowed.epoch, start=101)  # resume inside a window: exactly the rest
        assert _drawn(windowed) == grouped[101:]


def test_set_labels_changes_what_is_drawn_without_a_new_sampler():
    labels = _skewed_labels()
    sampler = UniformClusterSampler(labels, seed=0)
    before = {t for t, _, _ in _drawn(sampler)}
    assert before <= set(np.flatnonzero(labels >= 0))
    swapped = np.full_like(labels, -1)
    keep = np.flatnonzero(labels == 0)[:50]
    swapped[keep] = np.arange(50) % 5
    sampler.set_labels(swapped)
    after = _drawn(sampler)
    assert {t for t, _, _ in after} == set(keep.tolist())
    assert len(after) == 50
    assert np.bincount(swapped[[t for t, _, _ in after]], minlength=5).tolist() == [10] * 5


def test_samples_per_epoch_and_bad_input():
    labels = _skewed_labels()
    sampler = UniformClusterSampler(labels, rank=0, world_size=2, seed=0, samples_per_epoch=2000)
    assert len(sampler) == 1000
    with pytest.raises(ValueError, match="unassigned"):
        epoch_plan(np.full(10, -1, dtype=np.int32), 0, 0)
    with pytest.raises(ValueError, match="1-D integer"):
        UniformClusterSampler(np.zeros((2, 2), dtype=np.int32))
    with pytest.raises(ValueError, match="world"):
        UniformClusterSampler(labels, rank=2, world_size=2)
    with pytest.raises(ValueError, match="shard_offsets"):
        UniformClusterSampler(labels, shard_window=4)
    with pytest.raises(ValueError, match="max_open_shards / 2 = 128"):
        DataConfig(shard_window=129)


@pytest.mark.parametrize("domain", [1, 2, 3, 17, 1000, 4097])
def test_permute_is_a_bijection_and_inverse_undoes_it(domain):
    x = np.arange(domain)
    y = permute(x, domain, 12345)
    assert sorted(y.tolist()) == x.tolist()
    assert np.array_equal(permute(y, domain, 12345, inverse=True), x)
    if domain > 16:
        assert not np.array_equal(y, permute(x, domain, 54321))
    # per-element domains and keys: many small permutations in one call
    sizes = np.array([1, 5, 9, 33])
    points = np.concatenate([np.arange(s) for s in sizes])
    owner = np.repeat(np.arange(sizes.size), sizes)
    mixed = permute(points, sizes, np.arange(sizes.size) + 7, group=owner)
    for c, size in enumerate(sizes):
        assert sorted(mixed[owner == c].tolist()) == list(range(size))


def test_cluster_index_selects_members_in_tile_order_across_chunks():
    labels = _skewed_labels(4)
    index = ClusterIndex(labels, chunk=64)  # many chunks, most clusters split across them
    members = {c: np.flatnonzero(labels == v) for c, v in enumerate(index.values)}
    cluster = np.concatenate([np.full(m.size, c) for c, m in members.items()])
    rank = np.concatenate([np.arange(m.size) for m in members.values()])
    assert np.array_equal(index.select(cluster, rank), np.concatenate(list(members.values())))
    # the chunking is an implementation detail: the draws do not depend on it
    draws = [EpochDraws(ClusterIndex(labels, chunk=c), 3, 2) for c in (64, 1 << 20)]
    positions = np.arange(draws[0].n)
    assert all(np.array_equal(a, b) for a, b in zip(draws[0].at(positions), draws[1].at(positions)))


def test_quotas_are_exact_per_epoch():
    labels = _skewed_labels()
    order = epoch_plan(labels, seed=9, epoch=2, n_samples=1001)
    counts = np.bincount(labels[order], minlength=6)[[0, 2, 3, 4]]
    assert sorted(counts.tolist()) == [250, 250, 250, 251]  # n // C each, n % C clusters one more
