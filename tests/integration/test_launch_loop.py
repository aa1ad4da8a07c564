"""`python -m dcssl.launch`: the DeepCluster loop end to end, locally and chained on SLURM,
resumed after a killed launcher and a cancelled job without redoing finished epochs."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from slurm_helpers import scancel, wait_for_job_end, wait_until

from dcssl.config import load_run_config, save_run_config
from dcssl.jsonl import read_jsonl
from dcssl.launch.demo import demo_slide
from dcssl.store import Store

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "train.model.arch=resnet18",
    "train.model.width=8",
    "train.model.proj_dim=32",
    "train.augment.size=48",
    "train.data.batch_size=32",
    "train.data.workers=0",
    "cluster.k=6",
    "cluster.pca_dim=16",
]


def launch(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "dcssl.launch", *args], capture_output=True, text=True, timeout=timeout
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def tiled_run(tmp_path_factory) -> Path:
    """A run directory whose store holds the shipped real slide, tiled at 96 px."""
    run = tmp_path_factory.mktemp("tiled") / "run"
    launch("tile", str(run), "--slides", str(demo_slide()), "--executor", "local", "tile.tile_size=96")
    return run


def fresh_run(tiled_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiled_run, run)
    return run


def records(run: Path, kind: str, epoch: int | None = None) -> list[dict]:
    return [
        r
        for r in read_jsonl(run / "metrics.jsonl")
        if r.get("kind") == kind and (epoch is None or r.get("epoch") == epoch)
    ]


def assert_finished(run: Path, epochs: int) -> None:
    n_tiles = Store(run / "store").n_tiles
    for epoch in range(epochs + 1):
        labels = np.fromfile(run / "labels" / f"epoch-{epoch:04d}" / "labels.i32", dtype=np.int32)
        assert labels.shape == (n_tiles,) and labels.min() >= 0
        assert len(records(run, "epoch", epoch)) == 1
    assert all(
        r["nmi_prev"] is not None and 0 <= r["nmi_prev"] <= 1 for r in records(run, "epoch") if r["epoch"] > 0
    )
    assert (run / "charts" / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_local_loop_on_a_real_slide_then_rerun_is_a_no_op(tiled_run, tmp_path):
    run = fresh_run(tiled_run, tmp_path)
    out = launch("train", str(run), "--executor", "local", "--epochs", "2", *TINY)
    assert_finished(run, 2)
    assert "NMI(t-1,t)" in out.stdout and "progress.png" in out.stdout
    state = json.loads((run / "state.json").read_text())
    assert {name: s["status"] for name, s in state["steps"].items()} == {
        f"{kind}-{e:04d}": "done" for e in range(3) for kind in ("train", "cluster")
    }
    before = (run / "metrics.jsonl").read_bytes()
    again = launch("train", str(run), "--executor", "local", "--epochs", "2", *TINY)
    assert "nothing to run" in again.stderr
    assert (run / "metrics.jsonl").read_bytes() == before
    status = json.loads(launch("status", str(run), "--json").stdout.strip().splitlines()[-1])
    assert status["done"] == 1 and status["tiles"] == Store(run / "store").n_tiles


def test_killed_launcher_resumes_without_redoing_finished_steps(tiled_run, tmp_path):
    run = fresh_run(tiled_run, tmp_path)
    argv = [
        sys.executable,
        "-m",
        "dcssl.launch",
        "train",
        str(run),
        "--executor",
        "local",
        "--epochs",
        "2",
        *TINY,
    ]
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    first_labels = run / "labels" / "epoch-0000" / "COMPLETE"
    try:
        wait_until(
            lambda: first_labels.is_file() or proc.poll() is not None, 300, 0.5, "the first clustering"
        )
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the step it was running
        proc.wait()
    assert first_labels.is_file()
    stamp = first_labels.stat().st_mtime_ns
    launch("train", str(run), "--executor", "local", "--epochs", "2", *TINY)
    assert_finished(run, 2)
    assert first_labels.stat().st_mtime_ns == stamp
    assert len(records(run, "cluster", 0)) == 1  # clustering of epoch 0 ran exactly once


def labels_of(run: Path, epochs: int) -> list[np.ndarray]:
    return [
        np.fromfile(run / "labels" / f"epoch-{e:04d}" / "labels.i32", dtype=np.int32)
        for e in range(epochs + 1)
    ]


def recorded(run: Path, step: str) -> str | None:
    """The step's status in state.json as the launcher wrote it (None before it is written)."""
    try:
        return json.loads((run / "state.json").read_text())["steps"].get(step, {}).get("status")
    except (OSError, ValueError):
        return None


def loop_status(run: Path) -> dict[str, str]:
    report = json.loads(launch("status", str(run), "--json").stdout.strip().splitlines()[-1])
    return {step["name"]: step["status"] for step in report["loop"]["steps"]}


def test_one_launcher_per_run_and_a_killed_one_is_taken_over(tiled_run, tmp_path):
    undisturbed = fresh_run(tiled_run, tmp_path / "undisturbed")
    launch("train", str(undisturbed), "--executor", "local", "--epochs", "2", *TINY)
    run = fresh_run(tiled_run, tmp_path / "disturbed")
    argv = [sys.executable, "-m", "dcssl.launch", "train", str(run), "--executor", "local", "--epochs", "2"]
    first = subprocess.Popen(
        [*argv, *TINY], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        wait_until(
            lambda: recorded(run, "train-0001") == "running" or first.poll() is not None, 300, 0.2, "epoch 1"
        )
        during = loop_status(run)
        second = launch("train", str(run), "--executor", "local", "--epochs", "2", *TINY, check=False)
        job = subprocess.run(
            [sys.executable, "-m", "dcssl.cluster", str(run), "--epoch", "0"], capture_output=True, text=True
        )
        assert first.poll() is None, "the first launcher ended before the checks; the run is too short"
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the launcher and the step it was running
        first.wait()
    assert "running" in during.values() and "failed" not in during.values()
    assert during["train-0000"] == "done" and during["train-0001"] == "running"
    host = socket.gethostname()
    for refused in (second, job):
        assert refused.returncode == 2
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert f"run in use by pid {first.pid} on host {host} since " in refused.stderr
    assert "(launch train)" in second.stderr
    after = loop_status(run)
    # the step killed mid-way (none when the kill fell between steps or after its done marker)
    killed_mid_step = {n for n, status in after.items() if recorded(run, n) == "running" and status != "done"}
    assert "running" not in after.values()
    assert {name for name, status in after.items() if status == "interrupted"} == killed_mid_step
    taken = launch("train", str(run), "--executor", "local", "--epochs", "2", *TINY)
    assert f"taking over from pid {first.pid} on host {host}" in taken.stderr
    assert_finished(run, 2)
    for mine, reference in zip(labels_of(run, 2), labels_of(undisturbed, 2)):
        np.testing.assert_array_equal(mine, reference)


@pytest.mark.slurm
def test_plain_sbatch_pipeline_keeps_only_keep_features_banks(slurm_cluster, tiled_run, tmp_path):
    """slurm/pipeline.sh (copies with CPU-sized #SBATCH lines, as its header suggests) runs the
    same stage entry points as `launch train`: epochs published once, old banks pruned."""
    run = fresh_run(tiled_run, tmp_path)
    save_run_config(run, load_run_config(run, None, [*TINY, "loop.keep_features=1"]))
    scripts = tmp_path / "slurm"
    shutil.copytree(REPO / "slurm", scripts)
    sized = {
        "train.sbatch": {
            "--ntasks-per-node": "2",
            "--gpus-per-node": "0",
            "--cpus-per-task": "1",
            "--time": "15",
        },
        "cluster.sbatch": {"--ntasks": "2", "--cpus-per-task": "1", "--time": "15"},
    }
    for name, options in sized.items():
        text = (scripts / name).read_text()
        for option, value in options.items():
            text = re.sub(rf"^#SBATCH {option}=.*$", f"#SBATCH {option}={value}", text, flags=re.M)
        (scripts / name).write_text(text)
    env = dict(os.environ, PYTHON=sys.executable, SBATCH_PARTITION=slurm_cluster.partition)
    proc = subprocess.run(
        ["bash", str(scripts / "pipeline.sh"), str(run), "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1]
    # the chain holds the run between its jobs (its queue entries): a launcher is refused
    refused = launch("plot", str(run), check=False)
    assert refused.returncode == 2 and "SLURM job(s) " in refused.stderr, refused.stderr
    assert "(slurm/pipeline.sh)" in refused.stderr
    logs = run / "logs" / "sbatch"
    state = wait_for_job_end(last, timeout=1200)
    assert state == "COMPLETED", "\n".join(p.read_text()[-2000:] for p in sorted(logs.iterdir()))
    assert_finished(run, 2)
    assert sorted(p.name for p in (run / "features").iterdir()) == ["epoch-0002"]
    assert all((run / "train" / f"epoch-{e:04d}.done.json").is_file() for e in range(3))


@pytest.mark.slurm
def test_slurm_chain_survives_a_cancelled_job(slurm_cluster, tiled_run, tmp_path):
    run = fresh_run(tiled_run, tmp_path)
    common = [
        "--executor",
        "slurm",
        "--epochs",
        "2",
        *TINY,
        "executor_train.tasks_per_node=2",
        "executor_cluster.tasks_per_node=2",
        "executor_train.timeout_min=15",
        "executor_cluster.timeout_min=15",
    ]
    launch("train", str(run), *common)  # submits the chain and returns
    state = json.loads((run / "state.json").read_text())["steps"]
    victim = state["train-0001"]["job_id"]
    wait_until(
        lambda: (run / "labels" / "epoch-0000" / "COMPLETE").is_file(),
        300,
        1.0,
        "the first clustering on SLURM",
    )
    scancel(victim)
    waited = launch("train", str(run), *common, "--wait", timeout=900)
    assert "cancelled" in waited.stderr or "submitted train-0001" in waited.stderr
    assert_finished(run, 2)
    steps = json.loads((run / "state.json").read_text())["steps"]
    assert steps["train-0001"]["job_id"] != victim
    assert steps["train-0000"]["job_id"] == state["train-0000"]["job_id"]  # not resubmitted
    assert len(records(run, "cluster", 0)) == 1


@pytest.mark.parametrize(
    "case", ["bad-yaml", "unknown-key", "wrong-type", "no-run-dir", "unknown-subcommand"]
)
def test_bad_invocations_exit_2_with_one_line_and_write_nothing(tiled_run, tmp_path, case):
    run = fresh_run(tiled_run, tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {model: [unclosed\n")
    argv = {
        "bad-yaml": ["train", str(run), "--config", str(bad)],
        "unknown-key": ["train", str(run), "train.modle.arch=resnet18"],
        "wrong-type": ["train", str(run), "loop.epochs=many"],
        "no-run-dir": ["train", str(tmp_path / "missing")],
        "unknown-subcommand": ["trian", str(run)],
    }[case]
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    proc = launch(*argv, check=False)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: ")
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_demo_with_rcc_keeps_between_two_and_half_n_clusters_every_epoch(tmp_path):
    """The README's demo with RCC (k emerges): no single label, no near-singletons, and the
    `cluster` subcommand prints its result line."""
    run = tmp_path / "demo"
    launch("demo", "--out", str(run), "cluster.method=rcc", "loop.epochs=3", timeout=1500)
    n_tiles = Store(run / "store").n_tiles
    assert_finished(run, 3)
    for epoch in range(4):
        stats = json.loads((run / "labels" / f"epoch-{epoch:04d}" / "stats.json").read_text())
        assert stats["method"] == "rcc" and stats["n"] == n_tiles
        assert 1 < stats["clusters_used"] < n_tiles / 2, (epoch, stats["clusters_used"], n_tiles)
    again = launch("cluster", str(run), "--epoch", "3", "--redo", "cluster.method=rcc")
    line = [x for x in again.stdout.splitlines() if x.startswith("epoch 3 (rcc): ")]
    assert len(line) == 1 and " clusters found, largest " in line[0] and "NMI with epoch 2: 0." in line[0]
