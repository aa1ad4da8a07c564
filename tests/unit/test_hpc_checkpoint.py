"""hpc.checkpoint: atomic writes, keep-N, newest-valid-wins — including kill -9 mid-write."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from hpc.checkpoint import CheckpointManager, atomic_path, atomic_write_text, load_finite, torch_bytes
from hpc.integrity import DamagedFile, sha256_file, sidecar_path, write_sidecar


def test_keep_newest_two_and_load_latest(tmp_path):
    manager = CheckpointManager(tmp_path, keep=2)
    for step in (1, 2, 3):
        manager.save({"step": step, "w": torch.full((4,), step)}, step)
    assert manager.steps() == [2, 3]
    step, state = manager.load_latest()
    assert step == 3 and state["w"].tolist() == [3, 3, 3, 3]


def test_truncated_newest_falls_back(tmp_path):
    manager = CheckpointManager(tmp_path, keep=2)
    manager.save({"v": 1}, 10)
    manager.save({"v": 2}, 20)
    newest = manager.path_for(20)
    newest.write_bytes(newest.read_bytes()[:20])
    assert manager.load_latest() == (10, {"v": 1})


def test_garbled_bytes_fail_the_checksum_and_are_listed(tmp_path):
    manager = CheckpointManager(tmp_path, keep=2)
    manager.save({"w": torch.zeros(4096)}, 1)
    manager.save({"w": torch.ones(4096)}, 2)
    newest = manager.path_for(2)
    data = bytearray(newest.read_bytes())
    data[-2000:-1000] = os.urandom(1000)  # still a zip torch may read: only the checksum tells
    newest.write_bytes(bytes(data))
    step, state = manager.load_latest()
    assert step == 1 and float(state["w"].sum()) == 0
    assert [err.path for err in manager.damaged] == [newest]
    assert "checksum mismatch" in str(manager.damaged[0])


class _RunsCode:
    def __reduce__(self):  # unpickling calls os.makedirs(MARKER): code run by a plain torch.load
        return (os.makedirs, (str(self.marker),))


def test_pickled_code_is_refused(tmp_path):
    """weights_only: a planted checkpoint with a matching checksum still runs no code."""
    manager = CheckpointManager(tmp_path / "ckpt")
    payload = _RunsCode()
    payload.marker = tmp_path / "ran"
    manager.folder.mkdir()
    torch.save({"evil": payload}, manager.path_for(1))
    with pytest.raises(DamagedFile, match="no checksum"):
        manager.load(1)
    write_sidecar(manager.path_for(1), [sha256_file(manager.path_for(1))])
    with pytest.raises(DamagedFile, match="does not load"):
        manager.load(1)
    assert not payload.marker.exists()


def test_non_finite_weights_are_damage(tmp_path):
    manager = CheckpointManager(tmp_path, load_fn=load_finite)
    manager.save({"model": {"w": torch.tensor([1.0, float("nan")])}}, 1)
    with pytest.raises(DamagedFile, match=r"non-finite values \(model.w\)"):
        manager.load(1)


def test_modes_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        CheckpointManager(tmp_path).save({"w": torch.zeros(1)}, 1)
    finally:
        os.umask(old)
    for name in ("a.txt", "ckpt-000000001.pt", "ckpt-000000001.pt.sha256"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name
    os.umask(0o077)
    try:
        atomic_write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600


def test_a_crash_while_replacing_a_checkpoint_leaves_it_verifiable(tmp_path):
    """Saving a step again (phase train → done) records both digests until the rename is done,
    so a kill between the sidecar and the rename leaves whichever file is there loadable."""
    manager = CheckpointManager(tmp_path)
    path = manager.path_for(5)
    manager.save({"phase": "train"}, 5)
    replacement = tmp_path / "next.bin"
    replacement.write_bytes(torch_bytes({"phase": "done"}))
    write_sidecar(path, [sha256_file(replacement), sha256_file(path)])  # the sidecar is written…
    assert manager.load(5) == {"phase": "train"}  # …killed here: the old file still verifies
    os.replace(replacement, path)
    assert manager.load(5) == {"phase": "done"}  # …killed after the rename: the new one does
    manager.save({"phase": "done"}, 5)
    assert len(sidecar_path(path).read_text().splitlines()) == 1  # a finished save: one digest
    path.write_bytes(torch_bytes({"phase": "train"}))
    with pytest.raises(DamagedFile, match="checksum mismatch"):
        manager.load(5)


def test_nothing_to_load(tmp_path):
    assert CheckpointManager(tmp_path / "none").load_latest() is None


def test_failed_write_leaves_old_file(tmp_path):
    target = tmp_path / "f.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_kill_9_during_checkpoint_write(tmp_path):
    """A process killed while writing step 2 leaves step 1 loadable and no visible step 2."""
    script = textwrap.dedent(f"""
        import sys, time
        from hpc.checkpoint import CheckpointManager
        def slow_save(obj, path):
            with open(path, "wb") as f:
                for _ in range(1000):
                    f.write(b"x" * 65536)
                    f.flush()
                    time.sleep(0.01)
        CheckpointManager({str(tmp_path)!r}).save({{"step": 1}}, 1)
        slow = CheckpointManager({str(tmp_path)!r}, save_fn=slow_save)
        print("writing", flush=True)
        slow.save({{"step": 2}}, 2)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    time.sleep(0.5)  # well inside the ~10 s write
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    manager = CheckpointManager(tmp_path)
    assert manager.steps() == [1]
    assert manager.load_latest() == (1, {"step": 1})
    assert any(name.endswith(".tmp") for name in os.listdir(tmp_path))  # the dead write, ignored
    manager.save({"step": 3}, 3)  # the next save of these checkpoints removes it
    assert not any(name.endswith(".tmp") for name in os.listdir(tmp_path))
