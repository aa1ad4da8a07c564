"""``bench quality --seeds``: per-seed overrides and run directories, and the mean / spread summary."""

from __future__ import annotations

from pathlib import Path

import pytest

from dcssl.bench.quality import main as quality
from dcssl.bench.quality_seeds import parse_seeds, seed_overrides, seed_run_dir, summarise
from dcssl.config import load_run_config


def _line(seed: int, dc: float, simclr: float, swav: float, cpu: float) -> dict:
    return {
        "setting": "equal_images_seen",
        "seed": seed,
        "knn_pretrained": dc,
        "knn_random": 0.4,
        "knn_gain_points": round((dc - 0.4) * 100, 2),
        "cpu_minutes": {"deepcluster": cpu},
        "peers_knn": {"simclr": simclr, "swav": swav},
        "knn_vs_best_peer": round(dc / max(simclr, swav), 4),
        "label_fractions": {"pretrained@0.1": [dc - 0.1, dc - 0.05], "raw_pixels@0.1": [0.3, None]},
    }


def test_seed_overrides_put_the_loop_and_the_clustering_on_the_seed():
    cfg = load_run_config(overrides=seed_overrides(3))
    assert cfg.train.seed == 3 and cfg.cluster.seed == 3
    assert seed_run_dir(Path("/runs/q"), 3) == Path("/runs/q/seed-3")


def test_parse_seeds_accepts_distinct_non_negative_integers():
    assert parse_seeds("0,1") == [0, 1] and parse_seeds("") == []
    for bad in ("0,x", "1,1", "-1"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)


def test_summary_gives_mean_and_spread_and_the_ratio_of_means():
    lines = [_line(0, 0.60, 0.58, 0.50, 1.0), _line(1, 0.52, 0.56, 0.54, 1.2)]
    summary = summarise(lines)
    assert summary["setting"] == "equal_images_seen" and summary["seeds"] == [0, 1]
    assert summary["knn_pretrained"] == {"mean": 0.56, "min": 0.52, "max": 0.6}
    assert summary["knn_gain_points"] == {"mean": 16.0, "min": 12.0, "max": 20.0}
    assert summary["cpu_minutes_deepcluster"] == {"mean": 1.1, "min": 1.0, "max": 1.2}
    assert summary["peers_knn"]["simclr"] == {"mean": 0.57, "min": 0.56, "max": 0.58}
    # the best peer by mean (SimCLR 0.57 > SwAV 0.52), though SwAV beat SimCLR on seed 1
    assert summary["best_peer_by_mean"] == "simclr"
    assert summary["knn_vs_best_peer_of_means"] == round(0.56 / 0.57, 4)
    assert summary["label_fractions_mean"] == {"pretrained@0.1": [0.46, 0.51], "raw_pixels@0.1": [0.3, None]}
    per_seed = [0.6 / 0.58, 0.52 / 0.56]
    assert summary["knn_vs_best_peer"]["min"] == round(min(per_seed), 4)


def test_summary_without_peers_has_no_ratio():
    lines = [
        {k: v for k, v in _line(s, 0.5 + s / 10, 0.5, 0.5, 1.0).items() if "peer" not in k} for s in (0, 1)
    ]
    summary = summarise(lines)
    assert "peers_knn" not in summary and "knn_vs_best_peer_of_means" not in summary
    assert summary["knn_pretrained"]["mean"] == 0.55


def test_quality_bench_refuses_bad_seeds_in_one_line(tmp_path, capsys):
    assert quality(["--tiles", str(tmp_path), "--seeds", "0,0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--seeds 0,0: seeds must be distinct" in err[0]
