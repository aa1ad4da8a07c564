"""How much an accuracy on few queries can say: Wilson intervals, chance level, a paired sign test,
and the caveat ``launch eval`` prints when the labelled set is too small to rank encoders.

Measured on the 24 shipped Kather tiles (8 queries, one split): the k-NN accuracy of one encoder
moves by ±0.13 from one stratified split to the next, more than the gap ``eval`` reports between
pretrained and random — so a small set must say so next to its numbers.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["wilson_interval", "chance_level", "sign_test_p", "paired_counts", "small_set_caveat"]

# Below this many queries a 95 % interval is wider than ±0.1 at 50 % accuracy: say so.
FEW_QUERIES = 100


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion (stays inside [0, 1], sane at 0 and n)."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def chance_level(query_labels: np.ndarray) -> float:
    """Accuracy of always answering the queries' most common class."""
    return float(np.bincount(np.asarray(query_labels)).max() / len(query_labels))


def paired_counts(right_a: np.ndarray, right_b: np.ndarray) -> tuple[int, int]:
    """(queries only A got right, queries only B got right) — the discordant pairs."""
    return int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b))


def sign_test_p(only_a: int, only_b: int) -> float:
    """Exact two-sided sign (McNemar) test on the discordant pairs: 1.0 when they balance."""
    n, low = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(low + 1)) / 2**n
    return min(1.0, 2 * tail)


def _queries(n: int) -> str:
    return f"{n} query" if n == 1 else f"{n} queries"


def small_set_caveat(
    n_queries: int,
    n_classes: int,
    chance: float,
    interval: tuple[float, float],
    only_pretrained: int,
    only_random: int,
    p: float,
) -> str | None:
    """One paragraph for a set too small to rank encoders; None for a large enough one."""
    if n_queries >= FEW_QUERIES:
        return None
    return (
        f"caveat: {n_queries} queries ({n_queries / n_classes:.3g} per class) — one query moves an "
        f"accuracy by {1 / n_queries:.3f}; chance is {chance:.3f}; the 95 % interval of pretrained "
        f"k-NN is {interval[0]:.2f}–{interval[1]:.2f}; pretrained vs random differ on "
        f"{_queries(only_pretrained + only_random)} ({only_pretrained} only pretrained got right, "
        f"{only_random} only random; sign test p = {p:.2f}). A set this small cannot rank the "
        f"encoders; evaluate on hundreds of labelled tiles per class (README: NCT-CRC-HE-100K)."
    )
