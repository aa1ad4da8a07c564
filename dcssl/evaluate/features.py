"""Frozen-encoder forward passes over any tile source, batched, no gradients, with progress logs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import numpy as np
import torch

from dcssl.evaluate.labelled import TileSource
from dcssl.train.augment import eval_transform
from dcssl.train.config import AugmentConfig
from dcssl.train.data import decode_batch

__all__ = ["batches", "extract_features", "preprocess"]

log = logging.getLogger(__name__)


def preprocess(tiles: list[np.ndarray], augment: AugmentConfig, size: int) -> torch.Tensor:
    """The training run's extraction view: whole tile resized to ``size``, normalised."""
    tiles = [t if t.flags.writeable else t.copy() for t in tiles]  # torch refuses read-only views
    return eval_transform(decode_batch(tiles, size), replace(augment, size=size))


def batches(n: int, batch_size: int) -> Iterator[np.ndarray]:
    for start in range(0, n, batch_size):
        yield np.arange(start, min(n, start + batch_size))


@torch.no_grad()
def extract_features(
    encoder: Callable[[torch.Tensor], torch.Tensor],
    source: TileSource,
    augment: AugmentConfig,
    size: int,
    batch_size: int = 256,
    what: str = "features",
) -> np.ndarray:
    """N×d float32 features of every tile of ``source``, in order."""
    n, out, started, last_log = len(source), None, time.time(), time.time()
    for positions in batches(n, batch_size):
        feats = encoder(preprocess(source.read(positions), augment, size)).float().numpy()
        if out is None:
            out = np.empty((n, feats.shape[1]), dtype=np.float32)
        out[positions] = feats
        done = int(positions[-1]) + 1
        if time.time() - last_log > 10 or done == n:
            rate = done / max(time.time() - started, 1e-9)
            log.info("%s: %d/%d tiles, %.0f tiles/s, ETA %.0f s", what, done, n, rate, (n - done) / rate)
            last_log = time.time()
    return out if out is not None else np.empty((0, 0), dtype=np.float32)
