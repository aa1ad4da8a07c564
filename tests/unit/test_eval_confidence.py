"""The numbers ``eval`` puts beside a small set's accuracies, checked against scipy's own
Wilson interval and exact binomial test."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from dcssl.evaluate.confidence import (
    FEW_QUERIES,
    chance_level,
    paired_counts,
    sign_test_p,
    small_set_caveat,
    wilson_interval,
)


@pytest.mark.parametrize(("correct", "n"), [(0, 8), (2, 8), (4, 8), (8, 8), (37, 100), (6990, 7180)])
def test_wilson_interval_is_scipys(correct, n):
    expected = binomtest(correct, n).proportion_ci(0.95, method="wilson")
    low, high = wilson_interval(correct, n)
    assert low == pytest.approx(expected.low, abs=2e-4) and high == pytest.approx(expected.high, abs=2e-4)


@pytest.mark.parametrize(("only_a", "only_b"), [(1, 1), (0, 6), (5, 1), (12, 30), (3, 0)])
def test_sign_test_is_scipys_exact_binomial_test(only_a, only_b):
    expected = binomtest(only_a, only_a + only_b, 0.5).pvalue
    assert sign_test_p(only_a, only_b) == pytest.approx(expected, rel=1e-9)


def test_no_discordant_queries_is_no_evidence():
    assert sign_test_p(0, 0) == 1.0


def test_chance_is_the_most_common_query_class():
    assert chance_level(np.array([0, 1, 2, 3, 4, 5, 6, 7])) == 0.125
    assert chance_level(np.array([2, 2, 2, 0])) == 0.75


def test_paired_counts_are_the_discordant_queries():
    a = np.array([True, True, False, False, True])
    b = np.array([True, False, True, False, False])
    assert paired_counts(a, b) == (2, 1)


def test_caveat_names_the_queries_chance_interval_and_the_paired_counts():
    text = small_set_caveat(8, 8, 0.125, (0.07, 0.59), 1, 1, 1.0)
    for part in ("8 queries (1 per class)", "0.125", "0.07–0.59", "1 only pretrained", "p = 1.00"):
        assert part in text
    assert small_set_caveat(FEW_QUERIES, 8, 0.125, (0.4, 0.6), 3, 9, 0.15) is None
