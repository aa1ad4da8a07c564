"""The loader and train benchmarks run end to end on a few tiles and end with their JSON line."""

from __future__ import annotations

import json

import pytest
import torch

from dcssl.bench import loader, sampler, train


@pytest.fixture(autouse=True)
def _keep_threads():
    """The benchmarks set torch's thread count for their measurements; put it back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_loader_bench_reports_rates_and_ratios(capsys):
    assert (
        loader.main(["--tiles", "64", "--batch", "16", "--shards", "8", "--seconds", "0.2", "--rounds", "1"])
        == 0
    )
    result = _last_json(capsys)
    for key in (
        "tiles_per_s_per_core",
        "ratio_vs_decode",
        "ratio_vs_imagefolder",
        "decode_tiles_per_s",
        "imagefolder_tiles_per_s",
        "augmented_tiles_per_s_per_core",
        "windowed_tiles_per_s_per_core",
    ):
        assert result[key] > 0, key
    assert result["ratio_vs_decode"] == round(
        result["tiles_per_s_per_core"] / result["decode_tiles_per_s"], 3
    )


def test_sampler_bench_plans_every_rank_beside_the_global_plan(capsys):
    assert sampler.main(["--n", "20000", "--k", "50", "--world", "3"]) == 0
    result = _last_json(capsys)
    assert len(result["plan_cpu_s_per_rank"]) == len(result["peak_rss_mb_per_rank"]) == 3
    assert result["global_plan_cpu_s"] > 0 and result["speedup_vs_global"] > 0
    assert sampler.main(["--n", "10", "--k", "50"]) == 2  # more clusters than tiles: refused


def test_train_bench_reports_images_per_second(capsys):
    assert (
        train.main(
            [
                "--tiles",
                "48",
                "--arch",
                "resnet18",
                "--size",
                "32",
                "--batch",
                "8",
                "--seconds",
                "0.5",
                "--warmup",
                "1",
                "--k",
                "4",
            ]
        )
        == 0
    )
    result = _last_json(capsys)
    assert result["images_per_s"] > 0 and result["baseline_images_per_s"] > 0
    assert result["device"] in ("cpu", "cuda")
