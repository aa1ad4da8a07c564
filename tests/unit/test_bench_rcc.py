"""The RCC bench's size tests run in spawned children; their memory figure must be the child's own."""

from __future__ import annotations

import multiprocessing

import numpy as np

from dcssl.bench.rcc import _own_peak_rss_mb


def test_a_spawned_child_reports_its_own_peak_memory_not_its_parents():
    """ru_maxrss of a spawned child starts at the parent's RSS at the fork: with the labelled sets
    loaded in the parent, both size tests once read the parent's 930 MB."""
    ballast = np.ones(400 * 2**20 // 8)  # 400 MB, every page touched
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        child_mb = pool.apply(_own_peak_rss_mb)
    assert child_mb < 300 < ballast.nbytes / 2**20 <= _own_peak_rss_mb()
