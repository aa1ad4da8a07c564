"""hpc.lock: an flock held by a real process refuses others with its holder's record; once the
holder is killed -9 the kernel drops the lock and the next caller takes it over."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from hpc.lock import FileLock, LockHeld, describe_holder, is_locked, read_holder

HOLD = (
    "import sys; from hpc.lock import FileLock; "
    "lock = FileLock(sys.argv[1]).acquire(what='holder test'); print('held', flush=True); sys.stdin.read()"
)


@pytest.fixture
def holder(tmp_path):
    path = tmp_path / "run.lock"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "held"
    yield path, proc
    proc.kill()
    proc.wait()


def test_a_held_lock_refuses_and_names_its_holder(holder):
    path, proc = holder
    assert is_locked(path)
    with pytest.raises(LockHeld) as refused:
        FileLock(path).acquire(what="second")
    assert refused.value.holder["pid"] == proc.pid
    assert refused.value.holder["host"] == socket.gethostname()
    text = describe_holder(refused.value.holder)
    assert f"pid {proc.pid} on host {socket.gethostname()} since " in text and "(holder test)" in text


def test_a_lock_of_a_killed_process_is_taken_over(holder):
    path, proc = holder
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not is_locked(path)
    with FileLock(path).acquire(what="successor") as lock:
        assert lock.previous["pid"] == proc.pid and "released" not in lock.previous  # died holding it
        assert read_holder(path) == lock.holder and lock.holder["pid"] == os.getpid()
        lock.update(step="train-0001")
        assert json.loads(path.read_text())["step"] == "train-0001"
        assert is_locked(path)
    assert not is_locked(path)
    with FileLock(path).acquire() as again:  # a clean release is marked as such
        assert again.previous["pid"] == os.getpid() and again.previous["released"] >= again.previous["since"]


def test_an_unreadable_record_is_reported_not_raised(tmp_path):
    path = tmp_path / "run.lock"
    path.write_bytes(b"\xff\xfe binary")
    assert read_holder(path) == {}
    assert "another process" in describe_holder({})


UPDATER = (
    "import sys; from hpc.lock import FileLock; "
    "lock = FileLock(sys.argv[1]).acquire(what='updater'); print('held', flush=True)\n"
    "for i in range(4000): lock.update(running='x' * (i % 50))\n"
    "lock.release()"
)


def test_a_reader_polling_a_record_being_rewritten_always_sees_its_holder(tmp_path):
    # a launcher rewrites its record at every step (longer and shorter ones); a reader polling it
    # meanwhile (launch status, the run-lock tests) must never see an empty or torn record
    path = tmp_path / "run.lock"
    proc = subprocess.Popen([sys.executable, "-c", UPDATER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    reads, missing = 0, 0
    while proc.poll() is None:
        reads += 1
        missing += read_holder(path).get("pid") != proc.pid
    assert proc.wait() == 0
    assert reads > 100 and missing == 0, f"{missing} of {reads} reads found no holder"
