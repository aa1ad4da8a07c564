"""``python -m dcssl.bench gpu``: a clear exit without CUDA; every check runs (CPU self-test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch


def _bench(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dcssl.bench", "gpu", *args],
        capture_output=True,
        text=True,
        timeout=1200,
        env=env,
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is visible: the bench runs for real")
def test_without_cuda_it_exits_2_with_one_line():
    done = _bench()
    assert done.returncode == 2 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no CUDA device is visible")


@pytest.mark.slow
def test_cpu_self_test_runs_every_check_and_ends_with_one_json_line():
    done = _bench("--cpu-self-test")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0, done.stderr[-3000:]
    assert {"augment", "autocast", "ddp", "kmeans", "train"} <= set(result) and result["ok"]
    assert result["augment"]["max_abs_diff"] == 0.0  # the same device on both sides: bit-identical
    assert result["ddp"]["world_size"] == 2 and result["ddp"]["grad_max_rel_diff"] < 1e-5
    assert result["kmeans"]["labels_identical_fraction"] == 1.0
    assert result["kmeans"]["faiss_gpu_s_per_iter"] is None  # said so, not silently skipped
    trained = result["train"]["resnet18_fp16"]
    assert trained["images_per_s"] > 0 and trained["fp16_loss_scale"] > 0
    assert result["autocast"]["resnet18_bf16"]["embedding_min_cosine"] > 0.99
