"""k-means, assignment, empty-cluster splitting and NMI on one process (multi-rank: integration)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from sklearn.datasets import make_blobs
from sklearn.metrics import normalized_mutual_info_score

from dcssl.cluster import assign, kmeans, nmi, shard_rows
from dcssl.cluster.kmeans import KMeansState, refine_on_sample, split_empty


def _blobs(n=6000, d=16, centers=12, seed=0):
    x, y = make_blobs(
        n, n_features=d, centers=centers, random_state=seed, cluster_std=0.6, center_box=(-20, 20)
    )
    return x.astype(np.float32), y


def test_blobs_recovered_exactly():
    x, y = _blobs()
    centroids, labels, stats = kmeans(x, 12, iterations=50, seed=1, block=512)
    assert normalized_mutual_info_score(y, labels) > 0.999
    assert centroids.shape == (12, 16) and labels.dtype == np.int32
    assert stats["clusters_used"] == 12 and sum(stats["sizes"]) == len(x)
    assert stats["inertia_history"] == sorted(stats["inertia_history"], reverse=True)


def _nearest64(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float64 brute force: the nearest centroid, the lowest index on a tie."""
    return ((x[:, None, :].astype(np.float64) - c[None]) ** 2).sum(-1).argmin(1)


def _near_ties(n=3000, d=24, k=40, seed=0):
    """Rows almost exactly halfway between two centroids: float32 cannot tell which is nearer."""
    rng = np.random.default_rng(seed)
    c = (rng.standard_normal((k, d)) * 10).astype(np.float32)
    a, b = rng.integers(0, k, n), rng.integers(0, k, n)
    b = np.where(a == b, (b + 1) % k, b)
    mid = (c[a].astype(np.float64) + c[b]) / 2
    axis = c[a].astype(np.float64) - c[b]
    off = rng.standard_normal((n, d))
    off -= (off * axis).sum(1, keepdims=True) / (axis * axis).sum(1, keepdims=True) * axis
    x = mid + off + axis * rng.uniform(-1e-6, 1e-6, (n, 1))
    return x.astype(np.float32), c


def test_assign_is_the_exact_nearest_centroid_and_breaks_ties_low():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((777, 9)).astype(np.float32)
    c = rng.standard_normal((300, 9)).astype(np.float32)
    labels, dist = assign(x, c, block=100)
    assert (labels == _nearest64(x, c)).all()
    full = ((x[:, None, :].astype(np.float64) - c[None]) ** 2).sum(-1)
    np.testing.assert_allclose(dist, full.min(1), rtol=1e-4, atol=1e-4)
    twins = np.stack([c[0], c[0]])  # identical centroids: the lower index wins
    assert (assign(x, twins)[0] == 0).all()


def test_near_ties_are_settled_in_float64_whatever_the_threads_and_tiling():
    from threadpoolctl import threadpool_limits

    x, c = _near_ties()
    exact = _nearest64(x, c)
    for threads in (1, 2):
        with threadpool_limits(threads):
            for block in (7, 100, 4096):
                assert (assign(x, c, block=block)[0] == exact).all()
    with threadpool_limits(1):  # reversed rows: every row lands in another tile position
        assert (assign(x[::-1].copy(), c)[0] == exact[::-1]).all()


def test_kmeans_labels_do_not_depend_on_blas_threads():
    from threadpoolctl import threadpool_limits

    x, c = _near_ties(4000, k=30, seed=3)
    runs = []
    for threads in (1, 2):
        with threadpool_limits(threads):
            runs.append(kmeans(x, 30, iterations=6, tol=0.0, state=KMeansState(c.copy())))
    assert np.array_equal(runs[0][1], runs[1][1]) and np.array_equal(runs[0][0], runs[1][0])
    assert runs[0][2]["inertia_history"] == runs[1][2]["inertia_history"]


def test_chunked_centroids_give_the_same_labels(monkeypatch):
    km = importlib.import_module("dcssl.cluster.assigner")

    rng = np.random.default_rng(1)
    x = rng.standard_normal((1000, 8)).astype(np.float32)
    c = rng.standard_normal((500, 8)).astype(np.float32)
    whole = assign(x, c, block=256)[0]
    monkeypatch.setattr(km, "SCORE_BYTES", 256 * 4 * 64)  # 64 centroids per chunk
    assert (assign(x, c, block=256)[0] == whole).all()


def test_torch_backend_matches_numpy():
    x, _ = _blobs(2000)
    a = kmeans(x, 12, iterations=10, seed=3, backend="numpy")
    b = kmeans(x, 12, iterations=10, seed=3, backend="torch")
    assert (a[1] == b[1]).all()


def test_empty_clusters_are_split_deterministically():
    # 3 far-apart groups, but 6 centroids started on two points: 4 clusters go empty at once.
    x, _ = _blobs(900, d=4, centers=3)
    start = np.stack([x[0]] * 3 + [x[1]] * 3).astype(np.float32)
    runs = [kmeans(x, 6, iterations=15, state=KMeansState(start.copy())) for _ in range(2)]
    (c1, l1, s1), (c2, l2, s2) = runs
    assert s1["empty_split"] >= 4
    assert s1["clusters_used"] == 6 and min(s1["sizes"]) > 0
    assert np.array_equal(c1, c2) and np.array_equal(l1, l2)


def test_split_empty_halves_the_largest():
    cent = np.array([[1.0, 2.0], [3.0, 4.0], [0.0, 0.0]], dtype=np.float32)
    out, counts, n = split_empty(cent, np.array([10, 30, 0]))
    assert n == 1 and counts.tolist() == [10, 15, 15]
    np.testing.assert_allclose(out[2], [3 * (1 + 1 / 1024), 4 * (1 - 1 / 1024)], rtol=1e-6)
    np.testing.assert_allclose(out[1], [3 * (1 - 1 / 1024), 4 * (1 + 1 / 1024)], rtol=1e-6)


def test_resume_from_state_gives_identical_result():
    x = np.random.default_rng(4).standard_normal((3000, 8)).astype(np.float32)  # slow to converge
    ref = kmeans(x, 12, iterations=8, seed=5, tol=0.0)
    saved = {}

    def stop_after_3(state: KMeansState) -> None:
        if state.iteration == 3:
            saved["state"] = KMeansState(
                state.centroids.copy(),
                state.iteration,
                list(state.inertia),
                list(state.empty_split),
                list(state.seconds),
                state.converged,
            )

    kmeans(x, 12, iterations=8, seed=5, tol=0.0, on_iteration=stop_after_3)
    resumed = kmeans(x, 12, iterations=8, seed=5, tol=0.0, state=saved["state"])
    assert np.array_equal(ref[0], resumed[0]) and np.array_equal(ref[1], resumed[1])
    assert ref[2]["inertia_history"] == resumed[2]["inertia_history"]


def test_k_larger_than_n_is_a_clear_error():
    with pytest.raises(ValueError, match="k=20 exceeds the number of rows"):
        kmeans(np.zeros((10, 3), np.float32), 20)


def test_shard_rows_whole_blocks_cover_everything():
    for n, size, block in [(10_000, 3, 512), (7, 4, 2), (100, 8, 64)]:
        ranges = [shard_rows(n, r, size, block) for r in range(size)]
        assert ranges[0][0] == 0 and ranges[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
        assert all(start % block == 0 for start, _ in ranges if start < n)


@pytest.mark.parametrize(
    "ka,kb,n", [(5, 7, 1000), (60, 3, 20_000), (1, 1, 50), (1, 4, 100), (300, 300, 5000)]
)
def test_nmi_matches_sklearn(ka, kb, n):
    rng = np.random.default_rng(ka * kb)
    a = rng.integers(0, ka, n)
    b = np.where(rng.random(n) < 0.6, a % kb, rng.integers(0, kb, n))
    assert nmi(a, b) == pytest.approx(normalized_mutual_info_score(a, b), abs=1e-12)


def test_pruning_skips_rows_without_changing_any_result(monkeypatch):
    x, _ = _blobs(6000)
    pruned = kmeans(x, 20, iterations=15, tol=0.0, seed=2, block=512)  # 20 > 12 blobs: near-ties
    assert min(pruned[2]["rescanned_fraction_per_iteration"]) < 0.2  # the bounds do skip rows
    bounds = importlib.import_module("dcssl.cluster.bounds")
    monkeypatch.setattr(bounds.Bounds, "shift", lambda self, old, new: setattr(self, "valid", False))
    full = kmeans(x, 20, iterations=15, tol=0.0, seed=2, block=512)
    assert min(full[2]["rescanned_fraction_per_iteration"]) == 1.0
    np.testing.assert_array_equal(pruned[0], full[0])
    np.testing.assert_array_equal(pruned[1], full[1])
    assert pruned[2]["inertia_history"] == full[2]["inertia_history"]


def test_pruned_passes_with_movers_and_splits_match_full_scans(monkeypatch):
    # Started on 2 points for 8 clusters: empty clusters split for several iterations, so the
    # split halves are "movers" and the centroid-gap test sees twins.
    x, _ = _blobs(4000, d=8, centers=8, seed=5)
    start = np.stack([x[0]] * 4 + [x[1]] * 4).astype(np.float32)
    pruned = kmeans(x, 8, iterations=25, tol=0.0, state=KMeansState(start.copy()))
    assert pruned[2]["empty_split"] >= 6
    bounds = importlib.import_module("dcssl.cluster.bounds")
    monkeypatch.setattr(bounds.Bounds, "shift", lambda self, old, new: setattr(self, "valid", False))
    full = kmeans(x, 8, iterations=25, tol=0.0, state=KMeansState(start.copy()))
    np.testing.assert_array_equal(pruned[1], full[1])
    assert pruned[2]["inertia_history"] == full[2]["inertia_history"]


def test_centroid_gaps_are_lower_bounds_close_to_the_truth():
    from dcssl.cluster.bounds import centroid_gaps

    rng = np.random.default_rng(2)
    c = (rng.standard_normal((300, 16)) * 5 + 40).astype(np.float32)  # far from the origin
    c[7] = c[3]  # twins: gap 0
    movers = np.array([3, 50, 299])
    gaps = centroid_gaps(c, movers)
    dist = np.sqrt(((c[:, None].astype(np.float64) - c[None]) ** 2).sum(-1))
    np.fill_diagonal(dist, np.inf)
    assert (gaps.nearest <= dist.min(1)).all() and gaps.nearest[3] == gaps.nearest[7] == 0
    np.testing.assert_allclose(gaps.nearest[dist.min(1) > 1], dist.min(1)[dist.min(1) > 1], rtol=1e-3)
    assert (gaps.movers <= dist[:, movers].min(1)).all()
    np.testing.assert_allclose(gaps.movers[[0, 1, 2]], dist[[0, 1, 2]][:, movers].min(1), rtol=1e-3)


def test_cluster_sums_are_exact_in_any_order_and_under_moves():
    from dcssl.cluster.exact import ClusterSums

    rng = np.random.default_rng(7)
    x = (rng.standard_normal((5000, 6)) * np.logspace(-3, 3, 6)).astype(np.float32)
    first, second = rng.integers(0, 9, 5000), rng.integers(0, 9, 5000)
    maxabs = float(np.abs(x).max())

    def fresh(labels, order):
        sums = ClusterSums(9, 6, maxabs, len(x))
        for part in np.array_split(order, 7):  # any split, any order: as ranks would
            sums.add(x[part], labels[part])
        return sums

    a = fresh(second, np.arange(5000))
    b = fresh(second, rng.permutation(5000))
    moved = fresh(first, np.arange(5000))
    changed = np.flatnonzero(first != second)
    moved.move(x, changed, first[changed], second[changed])
    for other in (b, moved):
        assert np.array_equal(a.sums, other.sums) and np.array_equal(a.counts, other.counts)
    sums, counts = a.result()
    ref = np.stack([x[second == j].astype(np.float64).sum(0) for j in range(9)])
    np.testing.assert_allclose(sums, ref, rtol=1e-9, atol=maxabs * 1e-9)
    assert counts.tolist() == np.bincount(second, minlength=9).tolist()


def test_cuda_path_gives_the_same_labels_and_bounds(monkeypatch):
    # No GPU here: the cuda code path runs on CPU tensors (Tensor.cuda → the tensor itself).
    import torch

    from dcssl.cluster.assigner import Assigner

    monkeypatch.setattr(torch.Tensor, "cuda", lambda self: self)
    x, c = _near_ties(2000, k=30, seed=4)
    c[7] = c[3]  # twins: exact ties as well
    xx = np.einsum("ij,ij->i", x, x)
    cpu, gpu = Assigner(c, "numpy"), Assigner(c, "cuda")
    labels = []
    for lo in range(0, len(x), 512):
        a, b = (
            cpu.search(x[lo : lo + 512], xx[lo : lo + 512]),
            gpu.search(x[lo : lo + 512], xx[lo : lo + 512]),
        )
        np.testing.assert_allclose(a.upper, b.upper, rtol=1e-5)
        np.testing.assert_allclose(a.lower, b.lower, rtol=1e-5, atol=1e-5)
        labels.append(b.labels)
    assert (np.concatenate(labels) == _nearest64(x, c)).all()


def _mixture(n, d, components, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((components, d)).astype(np.float32) * 4
    return rng.standard_normal((n, d), dtype=np.float32) + centers[rng.integers(0, components, n)]


def _run_from(x, start, **kw):
    return kmeans(x, len(start), iterations=8, tol=0.0, state=KMeansState(start.copy()), log_every=0, **kw)


def test_group_bounds_prune_at_large_k_without_changing_any_result(monkeypatch):
    # k = 2,400 over a 200-component mixture: k over-clusters the data, as DeepCluster's k does.
    from dcssl.cluster import groups

    x = _mixture(12_000, 60, 200)
    start = x[np.random.default_rng(1).choice(len(x), 2400, replace=False)]
    assert groups.auto_groups(2400, 60) == 12
    pruned = _run_from(x, start)
    assert max(pruned[2]["rescanned_fraction_per_iteration"][2:]) < 0.2  # the group bounds do skip
    monkeypatch.setattr(groups.GroupBounds, "shift", lambda self, old, new: setattr(self, "valid", False))
    full = _run_from(x, start)
    assert set(full[2]["rescanned_fraction_per_iteration"]) == {1.0}
    assert pruned[2]["iterations"] >= 5
    single = _run_from(x, start, groups=1)
    for other in (full, single):
        np.testing.assert_array_equal(pruned[0], other[0])
        np.testing.assert_array_equal(pruned[1], other[1])
        assert pruned[2]["inertia_history"] == other[2]["inertia_history"]


def test_a_loosened_group_bound_changes_the_labels(monkeypatch):
    # The same run with each group's bound shrunk by only half its largest move: rows keep labels
    # they should have lost — the exactness above rests on the bound, not on luck.
    from dcssl.cluster import groups

    x = _mixture(12_000, 60, 200)
    start = x[np.random.default_rng(1).choice(len(x), 2400, replace=False)]
    exact = _run_from(x, start)
    real = groups.GroupBounds.group_moves
    monkeypatch.setattr(groups.GroupBounds, "group_moves", lambda self, moves: 0.5 * real(self, moves))
    loose = _run_from(x, start)
    assert not np.array_equal(exact[1], loose[1])


def test_kmeans_parallel_is_deterministic_per_seed_and_covers_the_mixture():
    from dcssl.cluster.seeding import init_centroids

    x = _mixture(20_000, 16, 50, seed=3)
    a = init_centroids(x, 300, method="kmeans||", seed=4, refiner=refine_on_sample)
    b = init_centroids(x, 300, method="kmeans||", seed=4, refiner=refine_on_sample)
    c = init_centroids(x, 300, method="kmeans||", seed=5, refiner=refine_on_sample)
    assert a.shape == (300, 16) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(np.unique(a, axis=0)) == 300
    random = init_centroids(x, 300, method="random", seed=4)
    assert assign(x, a)[1].sum() < 0.8 * assign(x, random)[1].sum()


def test_kmeans_parallel_resumes_after_a_round_with_the_same_centroids(monkeypatch):
    from dcssl.cluster import parallel_init
    from dcssl.cluster.parallel_init import kmeans_parallel

    monkeypatch.setattr(parallel_init, "_POOL_BYTES", 0)  # rounds, as at k = 10,000
    x = _mixture(20_000, 16, 50, seed=3)
    rounds = []
    whole = kmeans_parallel(x, 300, seed=4, on_round=rounds.append, refiner=refine_on_sample)
    assert [r["init_round"] for r in rounds] == [1, 2, 3, 4, 5]
    again = []
    resumed = kmeans_parallel(
        x, 300, seed=4, resume=rounds[1], on_round=again.append, refiner=refine_on_sample
    )
    assert [r["init_round"] for r in again] == [3, 4, 5]  # rounds 1-2 are not redone
    assert np.array_equal(whole, resumed)


def test_kmeans_parallel_draws_as_many_candidates_as_the_reduction_affords(monkeypatch):
    from dcssl.cluster import parallel_init

    monkeypatch.setattr(parallel_init, "_POOL_BYTES", 0)  # rounds, as at k = 10,000
    x = _mixture(20_000, 16, 50, seed=3)

    def candidates() -> int:
        rounds = []
        parallel_init.kmeans_parallel(
            x, 300, seed=4, on_round=rounds.append, refiner=refine_on_sample, refine=0
        )
        return len(rounds[-1]["init_cand"])

    assert parallel_init.oversample(300, 16) == 8.0  # a small k affords the most candidates
    assert 0.9 * 8 * 300 <= candidates() <= 8 * 300 + 1
    monkeypatch.setattr(parallel_init, "_REDUCE_FLOP", 1.0)  # k = 10,000, d = 256: the budget leaves 2 k
    assert parallel_init.oversample(300, 16) == 2.0 and parallel_init.oversample(10_000, 256) == 2.0
    assert 0.9 * 2 * 300 <= candidates() <= 2 * 300 + 1


def test_kmeans_parallel_restarts_keep_the_lowest_refined_sample_inertia(monkeypatch):
    from dcssl.cluster import parallel_init

    x = _mixture(20_000, 16, 50, seed=3)

    def refined(restarts: int) -> tuple[np.ndarray, list]:
        seen = []

        def refiner(rows, c, comm, iterations):
            seen.append(refine_on_sample(rows, c, comm, iterations))
            return seen[-1]

        return parallel_init.kmeans_parallel(x, 300, seed=6, refiner=refiner, restarts=restarts), seen

    best, seen = refined(4)
    inertia = [s[1] for s in seen]
    assert len(set(inertia)) == 4  # the reductions are seeded apart
    assert 0 < np.argmin(inertia) < 3  # neither the first nor the last: keeping either would fail
    assert np.array_equal(best, seen[int(np.argmin(inertia))][0])
    one, first = refined(1)
    assert [s[1] for s in first] == inertia[:1]  # restart 0 is the single reduction
    monkeypatch.setattr(parallel_init, "_RESTARTS_FLOP", 1.0)  # nothing affordable: one reduction
    assert np.array_equal(refined(4)[0], one)


def test_kmeans_parallel_takes_the_whole_sample_as_its_pool_while_the_reduction_affords_it(monkeypatch):
    from dcssl.cluster import parallel_init

    x = _mixture(20_000, 16, 50, seed=3)
    assert parallel_init._rounds_plan(20_000, 300, 16, 0) == (10_000, 0.0)  # 2·10⁴·300·16·7 flop: affordable
    assert parallel_init._rounds_plan(10**6, 10_000, 256, 0) == (100_000, 2.0)  # k = 10,000: rounds
    pools, rounds = [], []
    real = parallel_init._reduce
    monkeypatch.setattr(parallel_init, "_reduce", lambda c, w, *a: pools.append((c, w)) or real(c, w, *a))
    parallel_init.kmeans_parallel(
        x, 300, seed=4, on_round=rounds.append, refiner=refine_on_sample, restarts=1
    )
    (c, w), sample = pools[0], x[parallel_init.sample_index(len(x), 10_000, 4, 1)]
    assert rounds == [] and np.array_equal(c, sample) and np.array_equal(w, np.ones(10_000))


def test_group_bounds_on_the_cuda_path_match_numpy(monkeypatch):
    # No GPU here: the cuda code path runs on CPU tensors (Tensor.cuda → the tensor itself).
    import torch

    monkeypatch.setattr(torch.Tensor, "cuda", lambda self: self)
    x = _mixture(6000, 20, 100, seed=2)
    start = x[np.random.default_rng(3).choice(len(x), 2000, replace=False)]
    cpu, gpu = _run_from(x, start), _run_from(x, start, backend="cuda")
    assert min(gpu[2]["rescanned_fraction_per_iteration"]) < 0.5
    np.testing.assert_array_equal(cpu[0], gpu[0])
    np.testing.assert_array_equal(cpu[1], gpu[1])


def _weighted_cost(c: np.ndarray, w: np.ndarray, centers: np.ndarray) -> float:
    return float(w @ assign(c, centers)[1].astype(np.float64))


def test_greedy_reduction_keeps_distinct_picks_and_lowers_the_weighted_cost():
    from dcssl.cluster.parallel_init import _reduce

    c = _mixture(3000, 16, 40, seed=6)
    w = np.random.default_rng(6).integers(1, 20, len(c))
    for seed in range(3):
        plain, greedy = _reduce(c, w, 300, seed, 1), _reduce(c, w, 300, seed, 3)
        assert np.array_equal(greedy, _reduce(c, w, 300, seed, 3))  # deterministic per seed
        assert len(np.unique(greedy, axis=0)) == 300
        assert _weighted_cost(c, w, greedy) < _weighted_cost(c, w, plain)
    few = c[:302]  # fewer candidates than picks × trials: no candidate is picked twice
    assert len(np.unique(_reduce(few, w[:302], 300, 0, 3), axis=0)) == 300


def test_auto_init_keeps_kmeanspp_while_its_estimated_cost_is_affordable():
    from dcssl.cluster.seeding import auto_method

    # k-means++ costs ∝ restarts·k·log k·sample·d (sample 20·k): the switch moves with d and restarts.
    assert auto_method(10**6, 1000, 256) == "kmeans++" and auto_method(10**6, 2000, 256) == "kmeans||"
    assert auto_method(10**6, 2000, 64) == "kmeans++" and auto_method(10**6, 10_000, 64) == "kmeans||"
    assert auto_method(10**6, 2000, 256, trials=1) == "kmeans++"
    assert auto_method(10**6, 2000, 256, sample=4000) == "kmeans++"  # a small sample is cheap


def test_reduction_trials_are_2_plus_ln_k_until_rank_0_would_spend_too_long():
    from dcssl.cluster.parallel_init import reduce_trials

    assert reduce_trials(600, 300, 64) == 7 and reduce_trials(2000, 1000, 256) == 8  # 2 + ln k
    assert reduce_trials(20_000, 10_000, 64) == 11
    assert 3 <= reduce_trials(20_000, 10_000, 256) < 11  # capped: each trial costs 2·20 k·k·d
    assert reduce_trials(60_000, 30_000, 256) == 1
