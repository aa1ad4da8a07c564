"""hpc.checkpoint: atomic writes, keep-N, newest-valid-wins — including kill -9 mid-write."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from hpc.checkpoint import CheckpointManager, atomic_path, atomic_write_text


def test_keep_newest_two_and_load_latest(tmp_path):
    manager = CheckpointManager(tmp_path, keep=2)
    for step in (1, 2, 3):
        manager.save({"step": step, "w": np.full(4, step)}, step)
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
