"""Damaged or hostile state on a demo-sized run, as an unlucky user meets it: truncated, garbled and
non-finite checkpoints, a garbled tile, an edited label, a lab mate reading the run, a full disk.
Each must be refused with the file named — never silently used, never replacing newer work."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from test_launch_loop import TINY

from dcssl.launch.demo import demo_slide
from hpc.integrity import sha256_file, write_sidecar


def launch(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dcssl.launch", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=lambda: os.umask(0o022),
    )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """Tiled, two DeepCluster epochs, exported — made with umask 022."""
    run = tmp_path_factory.mktemp("integrity") / "run"
    ok(launch("tile", str(run), "--slides", str(demo_slide()), "--executor", "local", "tile.tile_size=96"))
    ok(launch("train", str(run), "--executor", "local", "--epochs", "2", *TINY))
    ok(launch("export", str(run)))
    return run


@pytest.fixture
def run(finished_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy, symlinks=True)
    return copy


def train_checkpoints(run: Path) -> list[Path]:
    return sorted((run / "checkpoints" / "train").glob("train-*.pt"))


def train_more(run: Path, *overrides: str) -> subprocess.CompletedProcess:
    return launch("train", str(run), "--executor", "local", "--epochs", "3", *TINY, *overrides)


def test_truncated_checkpoints_refuse_and_the_newer_export_stays(run):
    export = (run / "export" / "encoder.pt").read_bytes()
    older, newest = train_checkpoints(run)
    newest.write_bytes(newest.read_bytes()[:5000])
    out = launch("export", str(run))
    assert out.returncode == 2 and str(newest) in out.stderr and "checksum mismatch" in out.stderr
    assert (run / "export" / "encoder.pt").read_bytes() == export
    out = train_more(run)
    assert out.returncode == 2 and str(newest) in out.stderr, out.stderr
    assert "redo from epoch" in out.stderr and "new run directory" in out.stderr
    older.write_bytes(older.read_bytes()[:5000])
    out = train_more(run)
    assert out.returncode == 2 and str(newest) in out.stderr and str(older) in out.stderr
    assert "the seed's initial weights" in out.stderr and "redo from epoch 0" in out.stderr
    assert not (run / "train" / "epoch-0003.done.json").exists()
    verify = launch("verify", str(run))
    assert verify.returncode == 2
    assert [line.split(": ")[1] for line in verify.stdout.splitlines() if line.startswith("damaged")] == [
        str(older),
        str(newest),
    ]


def test_garbled_and_non_finite_checkpoints_are_damage(run):
    export = (run / "export" / "encoder.pt").read_bytes()
    newest = train_checkpoints(run)[-1]
    intact = newest.read_bytes()
    middle = len(intact) // 2
    newest.write_bytes(intact[:middle] + os.urandom(100_000) + intact[middle + 100_000 :])
    out = launch("export", str(run))
    assert out.returncode == 2 and str(newest) in out.stderr and "checksum mismatch" in out.stderr
    assert (run / "export" / "encoder.pt").read_bytes() == export
    # a checkpoint that loads and matches its checksum, but holds NaN weights
    newest.write_bytes(intact)
    state = torch.load(newest, weights_only=True)
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    weights = state["model"][name].flatten()  # (a copy: the stored tensor may be channels-last)
    weights[:85] = float("nan")
    state["model"][name] = weights.reshape(state["model"][name].shape)
    torch.save(state, newest)
    write_sidecar(newest, [sha256_file(newest)])
    out = train_more(run)
    assert out.returncode == 2 and f"{newest}: holds non-finite values (model.{name})" in out.stderr
    assert "last good" not in out.stderr + out.stdout
    out = launch("export", str(run))
    assert out.returncode == 2 and "non-finite" in out.stderr
    assert (run / "export" / "encoder.pt").read_bytes() == export


def test_export_never_replaces_newer_weights(run, tmp_path):
    export = (run / "export" / "encoder.pt").read_bytes()
    newest = train_checkpoints(run)[-1]
    newest.unlink()  # gone, not damaged: the older checkpoint is the newest there is
    newest.with_name(newest.name + ".sha256").unlink()
    out = launch("export", str(run))
    assert out.returncode == 2 and "newer than step" in out.stderr and "--out elsewhere" in out.stderr
    assert (run / "export" / "encoder.pt").read_bytes() == export
    elsewhere = tmp_path / "older" / "encoder.pt"
    ok(launch("export", str(run), "--out", str(elsewhere)))
    assert elsewhere.read_bytes() != export
    ok(launch("verify", str(run)))


def _garble_tile(shard: Path, row: int) -> None:
    with h5py.File(shard, "r") as f:
        tile = f["tiles"][row].tobytes()
    data = bytearray(shard.read_bytes())
    at = data.find(tile)
    assert at >= 0 and data.find(tile, at + 1) < 0
    cut = at + len(tile) // 2
    data[cut : cut + 64] = bytes(b ^ 0x5A for b in data[cut : cut + 64])
    shard.write_bytes(bytes(data))


def test_garbled_tile_and_edited_label_are_named_and_refused(run):
    shard = sorted((run / "store" / "shards").glob("*.h5"))[0]
    _garble_tile(shard, 5)
    labels_file = run / "labels" / "epoch-0002" / "labels.i32"
    original = labels_file.read_bytes()
    labels = np.frombuffer(original, dtype=np.int32).copy()
    labels[3] = (labels[3] + 1) % 6  # in range: only the checksum can tell
    labels_file.write_bytes(labels.tobytes())
    verify = launch("verify", str(run))
    assert verify.returncode == 2
    damaged = [line for line in verify.stdout.splitlines() if line.startswith("damaged")]
    assert len(damaged) == 2, verify.stdout
    assert f"{shard}: tile 5 fails its CRC32" in damaged[0] and "re-tile slide" in damaged[0]
    assert f"{labels_file}: checksum mismatch" in damaged[1] and "--epoch 2 --redo" in damaged[1]
    out = train_more(run)
    assert out.returncode == 2 and str(labels_file) in out.stderr and "--epoch 2 --redo" in out.stderr
    labels_file.write_bytes(original)
    # the tile is found when it is read (the extract pass reads every tile): the segment stops
    out = train_more(run, "train.feature_source=extract")
    assert out.returncode != 0 and f"{shard}: tile 5 fails its CRC32" in out.stderr, out.stderr[-3000:]
    assert not (run / "train" / "epoch-0003.done.json").exists()


def test_umask_022_run_is_readable_by_another_user(finished_run):
    for path in finished_run.rglob("*"):
        if path.is_file() and not path.is_symlink():
            assert path.stat().st_mode & 0o044 == 0o044, f"{path}: {oct(path.stat().st_mode)}"
        elif path.is_dir():
            assert path.stat().st_mode & 0o055 == 0o055, f"{path}: {oct(path.stat().st_mode)}"
    if os.geteuid() != 0:
        pytest.skip("creating another user needs root")
    name = "dcssl-reader"
    if subprocess.run(["id", name], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--system", "--no-create-home", name], check=True)
    # as that user; when the interpreter lives under a 0700 home (root's pyenv, as in CI), the
    # reader keeps CAP_DAC_READ_SEARCH to reach it: that capability lets it read and traverse,
    # never write, so "works without write access" is still what is shown, and readability
    # by the group/world is asserted from the mode bits above. Never mount or re-permission
    # the interpreter's folders instead.
    as_user = ["setpriv", f"--reuid={name}", f"--regid={name}", "--clear-groups"]
    reachable = subprocess.run([*as_user, "test", "-x", sys.executable])
    if reachable.returncode != 0:
        as_user += ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    shared = Path(tempfile.mkdtemp(prefix="dcssl-shared-", dir="/tmp"))
    try:
        shared.chmod(0o755)
        run = shared / "run"
        shutil.copytree(finished_run, run, symlinks=True)
        home = shared / "home"
        home.mkdir()
        shutil.chown(home, name)
        before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}

        def as_reader(*argv: str) -> subprocess.CompletedProcess:
            env = [f"PYTHONPATH={Path(__file__).parents[2]}", f"HOME={home}", "OMP_NUM_THREADS=1"]
            return subprocess.run(
                [*as_user, "env", *env, sys.executable, "-m", "dcssl.launch", *argv],
                capture_output=True,
                text=True,
                timeout=600,
                cwd=home,
            )

        assert "DeepCluster loop: 6 of 6 steps done" in ok(as_reader("status", str(run))).stdout
        refused = as_reader("plot", str(run))
        assert refused.returncode == 2 and "not writable for you" in refused.stderr
        ok(as_reader("plot", str(run), "--out", str(home / "progress.png")))
        ok(as_reader("export", str(run), "--out", str(home / "encoder.pt")))
        ok(as_reader("verify", str(run)))
        assert (home / "progress.png").read_bytes()[:4] == b"\x89PNG"
        assert (home / "encoder.pt").stat().st_uid != 0
        assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # the run was only read
    finally:
        shutil.rmtree(shared, ignore_errors=True)  # holds only copies: nothing mounted in it


def test_full_disk_is_one_line_then_a_rerun_finishes(finished_run):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = Path(tempfile.mkdtemp(prefix="dcssl-full-", dir="/tmp"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], check=True)
    try:
        run = mount / "run"
        shutil.copytree(finished_run, run, symlinks=True)
        stale = run / "checkpoints" / "train" / ".train-000000099.pt.abc123.tmp"
        stale.write_bytes(b"\0" * 300_000)  # what a killed checkpoint write leaves
        filler = mount / "filler"
        with open(filler, "wb") as handle:  # leave ~0.5 MB: the logs fit, a checkpoint does not
            handle.truncate(0)
            free = shutil.disk_usage(mount).free
            handle.write(b"\0" * (free - 512 * 1024))
        out = train_more(run)
        assert out.returncode == 1, out.stderr[-3000:]
        lines = [line for line in out.stderr.splitlines() if "no space left on" in line]
        assert lines and f"no space left on {run}" in lines[0] and "MB, has " in lines[0], out.stderr[-3000:]
        assert "unexpected pos" not in out.stderr
        assert not [p for p in run.rglob("*.tmp") if p != stale]  # nothing half-written
        assert not (run / "train" / "epoch-0003.done.json").exists()
        filler.unlink()
        ok(train_more(run))
        assert json.loads((run / "train" / "epoch-0003.done.json").read_text())["complete"]
        assert (run / "labels" / "epoch-0003" / "COMPLETE").is_file()
        assert not list(run.rglob("*.tmp"))  # the stale temp went with the next checkpoint write
        ok(launch("verify", str(run)))
    finally:
        subprocess.run(["umount", str(mount)], check=False)
        mount.rmdir()
