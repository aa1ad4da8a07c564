"""Pretrained against random init: k-NN and linear probe at several label fractions.

Both encoders see exactly the same reference subsets and queries; the random one is the same
architecture drawn with the seed training started from, so the difference is what training did.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch

from dcssl.evaluate.config import EvalConfig
from dcssl.evaluate.encoder import FrozenEncoder, LoadedEncoder, random_encoder, trained_encoder
from dcssl.evaluate.features import batches, extract_features
from dcssl.evaluate.knn import knn_accuracy
from dcssl.evaluate.labelled import LabelledSet, TileSource, fraction_subset, load_labelled
from dcssl.evaluate.linear import linear_accuracy
from dcssl.train.config import TrainConfig
from dcssl.train.data import decode_batch
from hpc.checkpoint import atomic_write_text

__all__ = ["evaluate", "evaluate_encoders", "raw_pixel_features", "format_table", "eval_path"]

log = logging.getLogger(__name__)


def eval_path(run_dir: str | Path) -> Path:
    return Path(run_dir) / "eval" / "eval.json"


def raw_pixel_features(source: TileSource, size: int = 0, batch_size: int = 1024) -> np.ndarray:
    """Flattened pixels in [0, 1]; ``size`` 0 = the tiles' own side, capped at 64."""
    if size == 0:
        size = min(64, max(source.read(np.array([0]))[0].shape[:2]))
    out = np.empty((len(source), 3 * size * size), dtype=np.float32)
    for positions in batches(len(source), batch_size):
        pixels = decode_batch(source.read(positions), size)
        out[positions] = pixels.reshape(len(positions), -1).float().numpy() / 255.0
    return out


def _score(
    cfg: EvalConfig,
    name: str,
    ref: np.ndarray,
    ref_y: np.ndarray,
    query: np.ndarray,
    query_y: np.ndarray,
    linear: bool = True,
) -> list[dict]:
    rows = []
    for fraction in sorted(cfg.fractions):
        subset = fraction_subset(ref_y, fraction, cfg.seed)
        started = time.time()
        knn = knn_accuracy(ref[subset], ref_y[subset], query, query_y, cfg.knn_k, cfg.knn_temperature)
        row = {"encoder": name, "fraction": fraction, "n_labels": int(len(subset)), "knn": knn}
        if linear:
            row["linear"], row["linear_weight_decay"] = linear_accuracy(
                ref[subset],
                ref_y[subset],
                query,
                query_y,
                cfg.linear_weight_decays,
                cfg.linear_max_iter,
                cfg.seed,
            )
        log.info(
            "%s at %g of the labels (%d): k-NN %.4f%s (%.1f s)",
            name,
            fraction,
            len(subset),
            knn,
            f", linear {row['linear']:.4f}" if linear else "",
            time.time() - started,
        )
        rows.append(row)
    return rows


def evaluate_encoders(
    data: LabelledSet, encoders: dict[str, LoadedEncoder], cfg: EvalConfig, train_cfg: TrainConfig
) -> list[dict]:
    """Rows of {encoder, fraction, n_labels, knn, linear, linear_weight_decay}."""
    size = cfg.size or train_cfg.augment.size
    rows: list[dict] = []
    for name, loaded in encoders.items():
        encoder = FrozenEncoder(loaded.net, cfg.layer)
        ref = extract_features(
            encoder, data.reference, train_cfg.augment, size, cfg.batch_size, f"{name} reference"
        )
        query = extract_features(
            encoder, data.queries, train_cfg.augment, size, cfg.batch_size, f"{name} queries"
        )
        rows += _score(cfg, name, ref, data.reference_labels, query, data.query_labels)
    if cfg.raw_pixels:
        ref = raw_pixel_features(data.reference, cfg.raw_size)
        query = raw_pixel_features(data.queries, cfg.raw_size)
        rows += _score(cfg, "raw_pixels", ref, data.reference_labels, query, data.query_labels, linear=False)
    return rows


def _headline(rows: list[dict]) -> dict:
    """Accuracies at the largest label fraction (100 % by default) as flat keys."""
    top = max(r["fraction"] for r in rows)
    flat = {"fraction": top}
    for r in rows:
        if r["fraction"] == top:
            flat[f"knn_{r['encoder']}"] = r["knn"]
            if "linear" in r:
                flat[f"linear_{r['encoder']}"] = r["linear"]
    return flat


def format_table(rows: list[dict]) -> list[str]:
    lines = [f"{'encoder':<12} {'labels':>7} {'n':>7} {'k-NN':>7} {'linear':>7}"]
    for r in rows:
        linear = f"{r['linear']:7.4f}" if "linear" in r else f"{'-':>7}"
        lines.append(f"{r['encoder']:<12} {r['fraction']:>7.0%} {r['n_labels']:>7d} {r['knn']:7.4f} {linear}")
    return lines


def evaluate(
    run_dir: str | Path,
    data_path: str | Path,
    cfg: EvalConfig,
    train_cfg: TrainConfig,
    out: str | Path | None = None,
) -> dict:
    """Evaluate the run's newest checkpoint and its random init; write ``out`` (default
    RUN/eval/eval.json)."""
    started = time.time()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = load_labelled(data_path, cfg.test_fraction, cfg.seed)
    log.info(
        "%s: %d reference, %d queries, %d classes",
        data.description,
        len(data.reference_labels),
        len(data.query_labels),
        data.n_classes,
    )
    trained = trained_encoder(run_dir, train_cfg)
    encoders = {"pretrained": trained, "random": random_encoder(train_cfg)}
    rows = evaluate_encoders(data, encoders, cfg, train_cfg)
    result = {
        **_headline(rows),
        "rows": rows,
        "data": str(data_path),
        "split": data.description,
        "n_reference": int(len(data.reference_labels)),
        "n_queries": int(len(data.query_labels)),
        "n_classes": data.n_classes,
        "checkpoint": str(trained.checkpoint),
        "checkpoint_step": trained.step,
        "checkpoint_epoch": trained.epoch,
        "arch": train_cfg.model.arch,
        "width": train_cfg.model.width,
        "layer": cfg.layer,
        "size": cfg.size or train_cfg.augment.size,
        "knn_k": cfg.knn_k,
        "knn_temperature": cfg.knn_temperature,
        "seconds": round(time.time() - started, 1),
    }
    atomic_write_text(out or eval_path(run_dir), json.dumps(result, indent=1))
    return result
