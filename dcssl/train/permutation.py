"""Pointwise pseudo-random permutations of [0, n): the image of any subset of points, in time and
memory proportional to the subset, without ever building the whole permutation.

A keyed Feistel network permutes [0, 4^h) (h = half the bits of n); cycle walking (apply it again
while the value is ≥ n) restricts it to a permutation of [0, n). Points may belong to groups, each
with its own domain and key, so one call permutes many small domains at once (one per cluster).
This is what lets every rank compute only its own share of an epoch's sample list.
"""

from __future__ import annotations

import numpy as np

from dcssl.train.augment import mix_seed, splitmix64

__all__ = ["permute", "keys"]

_U64 = np.uint64
_ROUNDS = 4  # ample mixing for sampling (not cryptography): splitmix64 is a full-avalanche hash
_ROUND_SALT = [_U64((0x632BE59BD9B4E019 * (i + 1)) % (1 << 64)) for i in range(_ROUNDS)]


def keys(seed: int, epoch: int, salt: int, ids: np.ndarray) -> np.ndarray:
    """One uint64 permutation key per id (e.g. per cluster), a pure function of its arguments."""
    with np.errstate(over="ignore"):
        return splitmix64(np.asarray(ids, dtype=_U64) + _U64(mix_seed(seed, epoch, salt)))


def _half_bits(domain: np.ndarray) -> np.ndarray:
    bits = np.ceil(np.log2(np.maximum(domain, 2).astype(np.float64)))
    return ((bits + 1) // 2).astype(_U64)


class _Params:
    """Per-group half width and round keys, gathered per point (or scalars without groups)."""

    def __init__(self, domain: np.ndarray, key: np.ndarray):
        self.domain, self.half = domain, _half_bits(domain)
        self.round_keys = [splitmix64(key ^ salt) for salt in _ROUND_SALT]

    def at(self, group: np.ndarray | None) -> tuple:
        if group is None:
            return self.domain, self.half, self.round_keys
        return self.domain[group], self.half[group], [k[group] for k in self.round_keys]


def _rounds(x: np.ndarray, half, round_keys: list, inverse: bool) -> np.ndarray:
    mask = (_U64(1) << half) - _U64(1)
    left, right = x >> half, x & mask
    for k in reversed(round_keys) if inverse else round_keys:
        if inverse:  # (L, R) ← (R ^ F(L), L)
            left, right = right ^ (splitmix64(left ^ k) & mask), left
        else:  # (L, R) ← (R, L ^ F(R))
            left, right = right, left ^ (splitmix64(right ^ k) & mask)
    return (left << half) | right


def permute(x: np.ndarray, domain, key, group: np.ndarray | None = None, inverse: bool = False) -> np.ndarray:
    """σ(x) for x in [0, domain) under the permutation named by ``key`` (σ⁻¹ when ``inverse``).

    Without ``group``, ``domain`` and ``key`` are scalars; with it, they are per-group arrays and
    point i uses ``domain[group[i]]``, ``key[group[i]]``. The result is uint64.
    """
    x = np.asarray(x, dtype=_U64)
    params = _Params(np.asarray(domain, dtype=_U64), np.asarray(key, dtype=_U64))
    bound, half, round_keys = params.at(group)
    if x.size and (x >= bound).any():
        raise ValueError("permute: a point lies outside its domain")
    y = _rounds(x, half, round_keys, inverse)
    todo = np.flatnonzero(y >= bound)
    while todo.size:  # cycle walking: about 2 passes on average, as 4^h < 4·domain
        sub_bound, sub_half, sub_keys = params.at(None if group is None else group[todo])
        y[todo] = _rounds(y[todo], sub_half, sub_keys, inverse)
        todo = todo[y[todo] >= sub_bound]
    return y
