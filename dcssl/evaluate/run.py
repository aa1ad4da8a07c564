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

from dcssl.evaluate.confidence import (
    chance_level,
    paired_counts,
    sign_test_p,
    small_set_caveat,
    wilson_interval,
)
from dcssl.evaluate.config import EvalConfig
from dcssl.evaluate.encoder import FrozenEncoder, LoadedEncoder, random_encoder, trained_encoder
from dcssl.evaluate.features import batches, extract_features
from dcssl.evaluate.knn import knn_predict
from dcssl.evaluate.labelled import LabelledSet, TileSource, fraction_subset, load_labelled
from dcssl.evaluate.linear import linear_accuracy
from dcssl.paths import RunPaths
from dcssl.train.config import TrainConfig
from dcssl.train.data import decode_batch
from hpc.checkpoint import atomic_write_text

__all__ = ["evaluate", "evaluate_encoders", "raw_pixel_features", "format_table", "eval_path"]

log = logging.getLogger(__name__)


def eval_path(run_dir: str | Path) -> Path:
    return RunPaths(Path(run_dir)).evaluation


def raw_pixel_features(source: TileSource, size: int = 0, batch_size: int = 1024) -> np.ndarray:
    """Flattened pixels in [0, 1]; ``size`` 0 = the tiles' own side, capped at 64."""
    if size == 0:
        size = min(64, max(source.read(np.array([0]))[0].shape[:2]))
    out = np.empty((len(source), 3 * size * size), dtype=np.float32)
    for positions in batches(len(source), batch_size):
        pixels = decode_batch(source.read(positions), size)
        out[positions] = pixels.reshape(len(positions), -1).float().numpy() / 255.0
    return out


def _knn_right(
    cfg: EvalConfig, ref: np.ndarray, ref_y: np.ndarray, query: np.ndarray, query_y: np.ndarray
) -> np.ndarray:
    """Per query: did the k-NN classifier answer it right (kept for the paired comparison)."""
    n_classes = int(max(np.max(ref_y), np.max(query_y)) + 1)
    pred = knn_predict(ref, ref_y, query, cfg.knn_k, cfg.knn_temperature, n_classes)
    return pred == np.asarray(query_y)


def _interval(correct: int, n: int) -> list[float]:
    return [round(bound, 4) for bound in wilson_interval(correct, n)]


def _knn_row(name: str, fraction: float, n_labels: int, right: np.ndarray, k_used: int) -> dict:
    """A table row's k-NN part: accuracy, how many queries that is, and its 95 % interval."""
    return {
        "encoder": name,
        "fraction": fraction,
        "n_labels": int(n_labels),
        "knn": float(right.mean()),
        "knn_correct": int(right.sum()),
        "knn_ci95": _interval(int(right.sum()), len(right)),
        "knn_k_used": k_used,  # = n_labels when k ≥ the references: every reference votes
    }


def _score(
    cfg: EvalConfig,
    name: str,
    ref: np.ndarray,
    ref_y: np.ndarray,
    query: np.ndarray,
    query_y: np.ndarray,
    answers: dict,
    linear: bool = True,
) -> list[dict]:
    rows = []
    for fraction in sorted(cfg.fractions):
        subset = fraction_subset(ref_y, fraction, cfg.seed)
        started = time.time()
        right = _knn_right(cfg, ref[subset], ref_y[subset], query, query_y)
        answers[(name, fraction)] = right
        row = _knn_row(name, fraction, len(subset), right, min(cfg.knn_k, len(subset)))
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
            row["linear_ci95"] = _interval(round(row["linear"] * len(query_y)), len(query_y))
        log.info(
            "%s at %g of the labels (%d): k-NN %.4f%s (%.1f s)",
            name,
            fraction,
            len(subset),
            row["knn"],
            f", linear {row['linear']:.4f}" if linear else "",
            time.time() - started,
        )
        rows.append(row)
    return rows


def evaluate_encoders(
    data: LabelledSet,
    encoders: dict[str, LoadedEncoder],
    cfg: EvalConfig,
    train_cfg: TrainConfig,
    answers: dict | None = None,
) -> list[dict]:
    """Rows of {encoder, fraction, n_labels, knn (+ correct, 95 % interval), linear,
    linear_weight_decay}; ``answers`` receives each (encoder, fraction)'s per-query k-NN rights."""
    answers = {} if answers is None else answers
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
        rows += _score(cfg, name, ref, data.reference_labels, query, data.query_labels, answers)
    if cfg.raw_pixels:
        ref = raw_pixel_features(data.reference, cfg.raw_size)
        query = raw_pixel_features(data.queries, cfg.raw_size)
        rows += _score(
            cfg, "raw_pixels", ref, data.reference_labels, query, data.query_labels, answers, linear=False
        )
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


def _reliability(rows: list[dict], answers: dict, query_labels: np.ndarray, n_classes: int) -> dict:
    """Chance level, pretrained-vs-random discordant queries at the top fraction, and the caveat
    for a set too small to rank them."""
    top = max(r["fraction"] for r in rows)
    chance = chance_level(query_labels)
    only_pre, only_rand = paired_counts(answers[("pretrained", top)], answers[("random", top)])
    p = sign_test_p(only_pre, only_rand)
    interval = next(r["knn_ci95"] for r in rows if r["fraction"] == top and r["encoder"] == "pretrained")
    return {
        "chance": round(chance, 4),
        "knn_only_pretrained_right": only_pre,
        "knn_only_random_right": only_rand,
        "knn_sign_test_p": round(p, 4),
        "caveat": small_set_caveat(len(query_labels), n_classes, chance, interval, only_pre, only_rand, p),
    }


def format_table(rows: list[dict]) -> list[str]:
    lines = [f"{'encoder':<12} {'labels':>7} {'n':>7} {'k-NN':>7} {'(95 % interval)':>15} {'linear':>7}"]
    for r in rows:
        linear = f"{r['linear']:7.4f}" if "linear" in r else f"{'-':>7}"
        low, high = r.get("knn_ci95", (float("nan"), float("nan")))
        lines.append(
            f"{r['encoder']:<12} {r['fraction']:>7.0%} {r['n_labels']:>7d} {r['knn']:7.4f} "
            f"{f'({low:.2f}–{high:.2f})':>15} {linear}"
        )
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
    answers: dict = {}
    rows = evaluate_encoders(data, encoders, cfg, train_cfg, answers)
    reliability = _reliability(rows, answers, data.query_labels, data.n_classes)
    result = {
        **_headline(rows),
        **reliability,
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
