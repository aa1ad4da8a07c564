"""Weighted cosine k-NN classifier on frozen features (Wu et al. 2018; as in DINO's eval).

Each query takes the k most cosine-similar reference features; neighbour j votes for its class
with weight exp(s_j / T). Queries are processed in blocks so memory stays at block × N_ref.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["knn_predict", "knn_accuracy"]


def _normalise(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float32))
    return torch.nn.functional.normalize(t, dim=1)


def knn_predict(
    train_x: np.ndarray,
    train_y: np.ndarray,
    query_x: np.ndarray,
    k: int = 20,
    temperature: float = 0.07,
    n_classes: int | None = None,
    block: int = 1024,
) -> np.ndarray:
    """Predicted class of every query row (int64)."""
    if len(train_x) == 0:
        raise ValueError("k-NN needs at least one reference example")
    ref = _normalise(train_x)
    labels = torch.as_tensor(np.asarray(train_y, dtype=np.int64))
    n_classes = int(n_classes if n_classes is not None else labels.max() + 1)
    k = min(k, len(ref))
    queries = _normalise(query_x)
    out = np.empty(len(queries), dtype=np.int64)
    for start in range(0, len(queries), block):
        sims = queries[start : start + block] @ ref.T
        top_sim, top_idx = sims.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(len(sims), n_classes)
        votes.scatter_add_(1, labels[top_idx], weights)
        out[start : start + len(sims)] = votes.argmax(1).numpy()
    return out


def knn_accuracy(
    train_x: np.ndarray,
    train_y: np.ndarray,
    query_x: np.ndarray,
    query_y: np.ndarray,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Top-1 accuracy in [0, 1] of the weighted k-NN classifier on the queries."""
    n_classes = int(max(np.max(train_y), np.max(query_y)) + 1)
    pred = knn_predict(train_x, train_y, query_x, k, temperature, n_classes)
    return float(np.mean(pred == np.asarray(query_y)))
