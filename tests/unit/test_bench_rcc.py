"""The RCC bench's size tests run in spawned children; their memory figure must be the child's own."""

from __future__ import annotations

import multiprocessing

import numpy as np
import pytest

from dcssl.bench.rcc import _own_peak_rss_mb


def test_a_spawned_child_reports_its_own_peak_memory_not_its_parents():
    """ru_maxrss of a spawned child starts at the parent's RSS at the fork: with the labelled sets
    loaded in the parent, both size tests once read the parent's 930 MB."""
    ballast = np.ones(400 * 2**20 // 8)  # 400 MB, every page touched
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        child_mb = pool.apply(_own_peak_rss_mb)
    assert child_mb < 300 < ballast.nbytes / 2**20 <= _own_peak_rss_mb()


def _blobs(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Eight overlapping blobs: k-means's result then depends on its seed."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 8, 800)
    return (rng.standard_normal((8, 6))[y] * 1.5 + rng.standard_normal((800, 6))).astype(np.float32), y


def test_kmeans_figure_is_the_mean_over_fixed_seeds_with_its_spread():
    """RCC is deterministic, k-means is not: one seed let the verdict turn on seed luck."""
    from sklearn.metrics import adjusted_mutual_info_score

    from dcssl.bench.rcc import _kmeans, kmeans_over_seeds

    x, y = _blobs()
    out = kmeans_over_seeds(x, y, 8, seeds=5)
    per_seed = [adjusted_mutual_info_score(y, _kmeans(x, 8, s)) for s in range(5)]
    assert out["seeds"] == 5 and out["clusters"] == 8
    assert out["ami"] == round(float(np.mean(per_seed)), 4)
    assert out["ami_min"] == round(min(per_seed), 4) and out["ami_max"] == round(max(per_seed), 4)
    assert out["ami_min"] < out["ami_max"], "the seeds must differ, or the test shows nothing"
    again = kmeans_over_seeds(x, y, 8, seeds=5)
    assert [again[k] for k in ("ami", "ami_min", "ami_max")] == [
        out[k] for k in ("ami", "ami_min", "ami_max")
    ]


def test_rcc_wins_only_against_the_mean_and_never_at_one_cluster():
    from dcssl.bench.rcc import rcc_wins

    def result(k, ami, mean, best):
        return {"rcc": {"clusters": k, "ami": ami}, "kmeans": {"ami": mean, "ami_max": best}}

    assert rcc_wins(result(265, 0.127, 0.126, 0.135))  # above the mean, below the best seed: a win
    assert not rcc_wins(result(265, 0.125, 0.126, 0.135))
    assert not rcc_wins(result(1, 0.0, 0.0, 0.0))


def test_compare_reports_rcc_beside_kmeans_over_its_seeds():
    from dcssl.bench.rcc import compare

    x, y = _blobs(1)
    out = compare(x, y, seeds=3)
    assert out["kmeans"]["clusters"] == out["rcc"]["clusters"] and out["kmeans"]["seeds"] == 3
    assert out["kmeans"]["ami_min"] <= out["kmeans"]["ami"] <= out["kmeans"]["ami_max"]


@pytest.mark.parametrize("bad", [["--kmeans-seeds", "0"], ["--pixel-size", "2"], ["--pixel-size", "-1"]])
def test_bad_protocol_arguments_are_one_line_errors_with_exit_2(bad, tmp_path, capsys):
    from dcssl.bench.rcc import main

    (tmp_path / "train").mkdir()
    assert main([*bad, "--crc", str(tmp_path), "--sets", "digits", "--scale", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--kmeans-seeds" in err and "--pixel-size" in err
