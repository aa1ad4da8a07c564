"""k-means|| (Bahmani et al. 2012): initial centroids from a sample distributed over the ranks,
where greedy k-means++ on rank 0 (``seeding``) would cost too much.

k-means|| at k = 10,000: greedy k-means++ costs k² × sample × d on rank 0 (hours); k-means||
takes ``rounds`` passes in which every sample row is drawn with probability ℓ·d²/φ (ℓ = o·k /
rounds, φ the sample's cost, o = ``oversample``: 2–8), so ~o·k candidates accumulate, each sample
row only ever measured against the new ones (sample × o·k × d in all, split over the ranks); the
candidates, weighted by the sample rows nearest to them, are reduced to k by weighted k-means++
in batches, several times (seeded apart, spread over the ranks, one BLAS thread each), each
result refined on the sample and the lowest sample inertia kept. Each round's state is small
(candidate indices, per-sample-row nearest candidate and distance) and handed to ``on_round``,
so a killed job resumes after the last finished round (the reductions, seconds, are redone).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .assigner import Assigner
from .exact import as_comm, broadcast, exact_total, gather_rows, global_count, global_max
from .sampling import Refiner, kmeanspp_sample, needs_refiner, sample_index

__all__ = ["kmeans_parallel", "oversample", "reduce_trials", "affordable_restarts"]

# k-means|| rounds (Bahmani et al.: 5 suffice; 10 or 20 rounds of the same candidates in all
# measured no better) and the candidates drawn in all, in units of k: as many as the reduction
# affords with its full greedy trials (``_REDUCE_FLOP``), between these two. More candidates
# approximate greedy k-means++ more closely (Bahmani et al. draw 2.5–10 k): inertia after 20
# iterations above 5-restart k-means++, BloodMNIST PCA-256 at k = 2,000 (3 seeds) 2 k +1.15 %,
# 4 k +0.73 %, 8 k +0.17 %, 16 k +0.24 %; 8 k with one trial per pick +2.1 % (the greedy trials
# matter more than the candidates). At k = 10,000, d = 256 the budget leaves 2 k.
_ROUNDS = 5
_OVERSAMPLE_MIN, _OVERSAMPLE_MAX = 2.0, 8.0
# Trials per pick of the weighted k-means++ reduction, the best kept (greedy): 2 + ln k as
# greedy k-means++ (scikit-learn's rule), fewer where that would cost rank 0 more than this many
# flop (2·candidates·k·d per trial; at k = 10,000, d = 256: 5 trials, 11.6 s instead of 7.7 s
# for 3, load 3). Inertia after 20 iterations above 5-restart k-means++ (init-quality data, 3
# seeds), 3 → 8 trials: BloodMNIST k = 300 +0.21 % → +0.06 %, k = 1,000 +0.58 % → +0.49 %;
# mixture k = 1,000 +0.08 % → −0.07 %. Restarts of the reduction, each refined on the sample
# (best sample inertia kept), or refining on the larger k-means++ sample gained nothing on top.
_REDUCE_FLOP = 5.5e11
# Sample rows per centroid k-means|| draws from when ``sample`` is 0: 20, as k-means++'s sample,
# or 10 where the rounds on 20 would cost more than ``_ROUNDS_FLOP`` (sample × candidates × 2d:
# k = 10,000 at d = 256, where 20 took the init from ≈ 27 s to 65 s on 2 loaded ranks). Picks
# and refinement on 10 rows per centroid end higher: 100 k × 32 mixture at k = 4,000 (4 seeds,
# 2 k candidates) +0.125 % above 5-restart k-means++ with 10, −0.174 % with 20.
_PER_CENTROID = 20, 10
_ROUNDS_FLOP = 1e12
# Reductions of the same candidates (each seeded apart and refined on the sample, the lowest
# sample inertia kept) while they cost at most this many flop in all, up to ``init_trials``:
# with many candidates one reduction ends about where one k-means++ restart does, not where the
# best of five does. Inertia after 20 iterations above 5-restart k-means++ (init-quality, 4
# seeds), one reduction → five: BloodMNIST PCA-256 k = 2,000 +0.234 % → +0.157 %, PCA-64 k = 300
# +0.145 % → +0.017 %, k = 1,000 +0.325 % → +0.267 %; mixture k = 4,000 −0.069 % → −0.101 %
# (with 2 k candidates, 2026-12-02, restarts gained nothing). Spread over the ranks, so R ranks
# pay ⌈restarts / R⌉ reductions' time; k = 10,000, d = 256 (2·10⁴ candidates, 5 trials:
# 5.1·10¹¹ flop each) affords two.
_RESTARTS_FLOP = 1.1e12
# Centroids per batch of the weighted k-means++ reduction, in units of k.
_BATCH_SHARE = 1 / 128
# Sample rows measured at once (float32 scores: rows × candidates of a round).
_TILE = 512
# The whole sample as the reduction's pool (no rounds, every row of weight 1) wherever the
# reduction affords it and its float32 rows, gathered on every rank, stay within this (the
# default 20·k sample at k = 2,000, d = 256: 41 MB). BloodMNIST PCA-256, k = 2,000 (inertia after
# 20 iterations above 5-restart k-means++): the D²-drawn pool with its weights +0.157 % though it
# held 15.8 k of 17.1 k rows, the whole sample +0.056 %; a thin pool (≈ 4 rows per candidate)
# needs its weights (unweighted +0.66 % worse), so where the rounds run the weights stay.
_POOL_BYTES = 2**28


def _rounds_plan(n: int, k: int, d: int, sample: int) -> tuple[int, float]:
    """(sample rows, candidates in units of k) of k-means||: 0 candidates — no rounds, the whole
    sample is the pool — where the reduction affords every sample row with its full trials
    (``_whole_sample``); else the first of 20·k rows with ``oversample``'s candidates, 20·k with
    2 k, 10·k with 2 k (k = 10,000 at d = 256) whose rounds fit ``_ROUNDS_FLOP``. 10 rows per
    centroid with many candidates measured worst of all (mixture at k = 4,000: +0.46 % with 8 k),
    so the fallback keeps 2 k."""
    many, few = _PER_CENTROID
    plans = ((many, oversample(k, d)), (many, _OVERSAMPLE_MIN), (few, _OVERSAMPLE_MIN))
    whole = kmeanspp_sample(n, k, sample)  # the sample k-means++ would take
    if _whole_sample(whole, k, d):
        return whole, 0.0
    if sample:
        return min(n, sample), plans[0][1]
    for per, over in plans:
        if 2.0 * per * k * over * k * d <= _ROUNDS_FLOP:
            break
    return min(n, max(per * k, 10_000)), over


def _whole_sample(m: int, k: int, d: int) -> bool:
    """Whether the reduction can take all ``m`` sample rows as its candidates: with its full
    greedy trials (``reduce_trials``) and the rows (gathered on every rank) in ``_POOL_BYTES``."""
    return reduce_trials(m, k, d) == 2 + int(np.log(k)) and 4 * m * d <= _POOL_BYTES


def kmeans_parallel(
    x_local: np.ndarray,
    k: int,
    comm=None,
    *,
    sample: int = 0,
    seed: int = 0,
    row0: int = 0,
    rounds: int = _ROUNDS,
    refine: int = 20,
    resume: dict | None = None,
    on_round: Callable[[dict], None] | None = None,
    refiner: Refiner | None = None,
    trials: int = 0,
    restarts: int = 1,
) -> np.ndarray:
    """k-means|| on ``sample`` rows (0: max(20 k, 10 000), 10 k where that costs too much; see
    ``_rounds_plan``), each rank measuring its own share; where the reduction affords every
    sample row, no rounds: the reduction alone, over the whole sample (sampled greedy k-means++).

    ``on_round(state)`` runs on every rank after each round with the global state (the same on
    all ranks); passing it back as ``resume`` continues after that round. ``refine``: Lloyd
    iterations on the sample after the reduction (stopping early once the inertia stalls).
    ``trials``: greedy trials per pick of the reduction (0: ``reduce_trials``). ``restarts``:
    reductions of the same candidates (seeded apart, spread over the ranks, at most
    ``affordable_restarts``), each refined; the lowest sample inertia wins.
    """
    comm = as_comm(comm)
    n = global_count(len(x_local), comm)
    m, over = _rounds_plan(n, k, x_local.shape[1], sample)
    held = _HeldSample.of(x_local, row0, sample_index(n, m, seed, 1), comm)
    xs = held.rows
    if over == 0:  # every sample row a candidate of weight 1: rounds would only thin the pool
        c, weights = np.asarray(held.gather(np.arange(m)), dtype=np.float32), np.ones(m, dtype=np.int64)
    else:
        c, weights = _rounds(held, k, over, seed, rounds, resume, on_round)
    trials = trials or reduce_trials(len(c), k, c.shape[1])
    runs = min(max(restarts, 1), affordable_restarts(len(c), k, c.shape[1], trials))
    own = {
        r: _reduce(c, weights, k, seed, trials, r)
        for r in range(runs)
        if r % comm.Get_size() == comm.Get_rank()
    }
    if runs == 1 and not refine:
        return broadcast(own.get(0, np.zeros((k, c.shape[1]), dtype=np.float32)), comm)
    best, best_inertia = None, np.inf
    for r in range(runs):  # each reduction from its rank, refined on the distributed sample
        start = broadcast(
            own.pop(r, np.zeros((k, c.shape[1]), dtype=np.float32)), comm, root=r % comm.Get_size()
        )
        cent, inertia = needs_refiner(refiner)(xs, start, comm, refine)
        if inertia < best_inertia:  # global (the same on every rank); a tie keeps the earlier
            best, best_inertia = cent, inertia
    return best


@dataclass(frozen=True)
class _HeldSample:
    """The seeded init sample as one rank holds it: its share of the rows, in sample order."""

    rows: np.ndarray
    """This rank's sample rows (float32)."""
    mine: np.ndarray
    """Their positions in the whole sample."""
    size: int
    """Rows in the whole sample, over all ranks."""
    gather: Callable[[np.ndarray], np.ndarray]
    """Sample positions → their rows, on every rank."""
    comm: object

    @classmethod
    def of(cls, x_local: np.ndarray, row0: int, index: np.ndarray, comm) -> _HeldSample:
        """The sample ``index`` (sorted global rows) of ``x_local``, this rank's rows from ``row0``."""
        end = row0 + len(x_local)
        mine = np.flatnonzero((index >= row0) & (index < end))
        rows = np.ascontiguousarray(x_local[index[mine] - row0], dtype=np.float32)
        gather = lambda picked: gather_rows(x_local, row0, end, index[picked], comm, root=None)  # noqa: E731
        return cls(rows, mine, len(index), gather, comm)


def _rounds(held: _HeldSample, k, over, seed, rounds, resume, on_round) -> tuple[np.ndarray, np.ndarray]:
    """k-means||'s sampling rounds over the distributed sample → (candidates, weights: the
    sample rows nearest to each), the same on every rank."""
    xs, mine, m, gather, comm = held.rows, held.mine, held.size, held.gather, held.comm
    if resume is None:
        picked = np.array([int(np.random.default_rng([seed, 4]).integers(m))])
        d2, near, done = np.full(len(mine), np.inf), np.zeros(len(mine), dtype=np.int64), 0
        cand = [np.asarray(gather(picked), dtype=np.float32)]
        _closer(xs, cand[0], 0, d2, near)
        picked_all = picked
    else:
        picked_all, done = np.asarray(resume["init_cand"], dtype=np.int64), int(resume["init_round"])
        d2, near = np.asarray(resume["init_d2"])[mine].copy(), np.asarray(resume["init_near"])[mine].copy()
        cand = [np.asarray(gather(picked_all), dtype=np.float32)] if len(picked_all) else []
    draw = over * k / max(rounds, 1)
    for r in range(done, rounds):
        bound = m * float(global_max(d2.max() if len(d2) else 0.0, comm)[0]) * 1.01 + 1e-300
        phi = exact_total(d2, bound, comm)
        u = np.random.default_rng([seed, 5, r]).random(m)[mine]
        local = np.zeros(m, dtype=np.int64)
        local[mine[u * phi < draw * d2]] = 1
        new = np.flatnonzero(_allreduce(local, comm))
        if len(new):
            rows = np.asarray(gather(new), dtype=np.float32)
            _closer(xs, rows, len(picked_all), d2, near)
            cand.append(rows)
            picked_all = np.r_[picked_all, new]
        if on_round is not None:
            on_round(_round_state(r + 1, picked_all, d2, near, held))
    if len(picked_all) < k:  # few distinct rows drew: top up with seeded sample rows
        order = np.random.default_rng([seed, 7]).permutation(m)
        extra = np.sort(order[~np.isin(order, picked_all)][: k - len(picked_all)])
        rows = np.asarray(gather(extra), dtype=np.float32)
        _closer(xs, rows, len(picked_all), d2, near)
        cand.append(rows)
    c = np.concatenate(cand)
    return c, _allreduce(np.bincount(near, minlength=len(c)).astype(np.int64), comm)


def oversample(k: int, d: int) -> float:
    """Candidates k-means|| draws, in units of k: as many as a reduction with 2 + ln k trials
    per pick fits in ``_REDUCE_FLOP``, within [``_OVERSAMPLE_MIN``, ``_OVERSAMPLE_MAX``]."""
    afford = _REDUCE_FLOP / (2.0 * (2 + int(np.log(k))) * k * k * d)
    return float(np.clip(afford, _OVERSAMPLE_MIN, _OVERSAMPLE_MAX))


def reduce_trials(candidates: int, k: int, d: int) -> int:
    """Greedy trials per pick of the reduction: 2 + ln k, capped by ``_REDUCE_FLOP`` (≥ 1)."""
    per_trial = 2.0 * candidates * k * d
    return max(1, min(2 + int(np.log(k)), int(_REDUCE_FLOP // per_trial)))


def affordable_restarts(candidates: int, k: int, d: int, trials: int) -> int:
    """Reductions of ``trials`` greedy trials per pick that fit ``_RESTARTS_FLOP`` (≥ 1)."""
    return max(1, int(_RESTARTS_FLOP // (2.0 * candidates * k * d * trials)))


def _allreduce(values: np.ndarray, comm) -> np.ndarray:
    from hpc.mpi import allreduce_

    return allreduce_(values, comm) if comm.Get_size() > 1 else values


def _round_state(r: int, picked: np.ndarray, d2, near, held: _HeldSample) -> dict:
    """The global k-means|| state after round ``r`` (per-sample-row arrays by sample position)."""
    full_d2, full_near = np.zeros(held.size), np.zeros(held.size, dtype=np.int64)
    full_d2[held.mine], full_near[held.mine] = d2, near
    return {
        "init_round": r,
        "init_cand": picked.copy(),
        "init_d2": _allreduce(full_d2, held.comm),
        "init_near": _allreduce(full_near, held.comm),
    }


def _closer(xs: np.ndarray, new: np.ndarray, offset: int, d2: np.ndarray, near: np.ndarray) -> None:
    """Sample rows whose exact nearest new candidate (float64 distance, one formula) is nearer
    than their current one move to it; a tie keeps the earlier (lower-index) candidate."""
    if len(xs) == 0:
        return
    finder = Assigner(new)
    xx = np.einsum("ij,ij->i", xs, xs)
    for lo in range(0, len(xs), _TILE):
        hi = min(lo + _TILE, len(xs))
        labels = finder.search(xs[lo:hi], xx[lo:hi]).labels
        dist = finder.dist64(xs[lo:hi], np.arange(hi - lo), labels)
        closer = dist < d2[lo:hi]
        d2[lo:hi][closer] = dist[closer]
        near[lo:hi][closer] = offset + labels[closer]


def _reduce(
    c: np.ndarray, weights: np.ndarray, k: int, seed: int, trials: int = 1, restart: int = 0
) -> np.ndarray:
    """k of the candidates by weighted k-means++ (D²·weight sampling), in batches of k/128
    drawn without replacement, ``trials`` draws per pick of which the greedy best is kept; one
    BLAS thread, so the picks depend neither on thread counts nor on which rank runs them."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng([seed, 6] if restart == 0 else [seed, 6, restart])
    w = weights.astype(np.float64) + 1e-12  # a candidate nobody is nearest to (duplicates) stays drawable
    cc = np.einsum("ij,ij->i", c, c)
    closest = np.full(len(c), np.inf)
    picks = [int(rng.choice(len(c), p=w / w.sum()))]
    batch = max(1, int(k * _BATCH_SHARE))
    with threadpool_limits(1):
        new = np.array(picks)
        while True:
            d = cc[None, :] - 2.0 * (c[new] @ c.T) + cc[new, None]
            np.minimum(closest, np.maximum(d.min(axis=0), 0.0), out=closest)
            closest[new] = 0.0
            left = k - len(picks)
            if left == 0:
                break
            p = w * closest
            keys = rng.standard_exponential(len(c)) / np.where(p > 0, p, np.nan)
            keys[np.isnan(keys)] = np.inf
            keys[picks] = np.nan  # never again (sorted last)
            take = min(batch, left)
            tries = max(1, min(trials, (len(c) - len(picks)) // take))  # never an earlier pick
            new = np.argsort(keys, kind="stable")[: take * tries]
            if tries > 1:
                new = _greedy(c, cc, w, closest, new.reshape(take, tries))
            picks.extend(int(i) for i in new)
    return c[np.array(picks)]


def _greedy(c, cc, w, closest, slots):
    """Per slot, the trial that lowers the weighted cost most (slots in order, each seeing the
    previous slots' picks); the trials' distances in one product per batch."""
    flat = slots.ravel()
    d = np.maximum(cc[None, :] - 2.0 * (c[flat] @ c.T) + cc[flat, None], 0.0).reshape(*slots.shape, -1)
    out, closest = [], closest.copy()
    for trial, dist in zip(slots, d, strict=True):
        cand = np.minimum(closest[None, :], dist)
        best = int(np.argmin(cand @ w))
        closest = cand[best]
        out.append(int(trial[best]))
    return np.array(out)
