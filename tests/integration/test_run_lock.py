"""The run lock with real processes: the demo holds its run across all its stages; a local tile
array keeps its run after its launcher is killed -9 (its elements' pids are the lease) and the
run is taken over once they end; writers into a run (export, embed, eval, curate, a new ingest)
hold it exclusively while readers writing elsewhere need no lock; a refused multi-rank job stops
on every rank (gloo and MPI); Ctrl-C in a local job puts one line in its own log; `launch status`
writes an overdue store manifest only when no one else holds the run."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_bad_inputs import assert_refused, tree_hash
from test_launch_loop import TINY

from dcssl.launch.demo import demo_slide
from hpc.lock import is_locked, read_holder
from hpc.mpi import mpiexec

DATA = Path(__file__).resolve().parents[1] / "data"
HOST = socket.gethostname()
HOLD = (
    "import sys; from hpc.lock import FileLock; "
    "lock = FileLock(sys.argv[1]).acquire(what='a test holder'); print('held', flush=True); sys.stdin.read()"
)


def launch(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dcssl.launch", *args], capture_output=True, text=True, timeout=timeout
    )


def wait_until(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.1)


@pytest.fixture
def holder(tmp_path):
    """A real process holding a run's lock (a launcher that never lets go): hold(run) → pid."""
    procs = []

    def hold(run: Path) -> int:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(run / "run.lock")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc.pid

    yield hold
    for proc in procs:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory) -> dict:
    """A demo (1 epoch) whose lock is watched from the moment it exists to the demo's end; in the
    middle the demo is stopped (SIGSTOP) and a second launcher tried on its frozen run."""
    run = tmp_path_factory.mktemp("demo") / "run"
    demo = subprocess.Popen(
        [sys.executable, "-m", "dcssl.launch", "demo", "--out", str(run), "loop.epochs=1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    seen = {"samples": "", "holders": set()}  # H held, F free, in time order
    stopped = None
    while demo.poll() is None:
        if (run / "run.lock").exists():
            locked = is_locked(run / "run.lock")
            seen["samples"] += "H" if locked else "F"
            seen["holders"].add(read_holder(run / "run.lock").get("pid"))
            if stopped is None and (run / "state.json").is_file():
                stopped = _second_launcher_on_a_stopped_demo(demo, run)
        time.sleep(0.05)
    out, err = demo.communicate()
    assert demo.returncode == 0, out[-2000:] + err[-3000:]
    return {"run": run, "pid": demo.pid, "seen": seen, "stopped": stopped}


def _second_launcher_on_a_stopped_demo(demo: subprocess.Popen, run: Path) -> dict:
    os.killpg(demo.pid, signal.SIGSTOP)  # the demo and its step: the run cannot change now
    try:
        before = tree_hash(run)
        second = launch("train", str(run), "--executor", "local")
        plot = launch("plot", str(run))
        return {"train": second, "plot": plot, "unchanged": tree_hash(run) == before}
    finally:
        os.killpg(demo.pid, signal.SIGCONT)


def test_the_demo_holds_its_run_across_all_its_stages(demo_run):
    seen = demo_run["seen"]
    # held from the first look to the end (free only once it let go, as the process exits):
    # never free between tile, train, export and report
    held = seen["samples"].rstrip("F")
    assert len(held) > 10 and "F" not in held, seen["samples"]
    assert seen["holders"] == {demo_run["pid"]}
    stopped = demo_run["stopped"]
    assert stopped is not None, "the demo ended before its train stage was seen"
    for refused in (stopped["train"], stopped["plot"]):
        assert_refused(refused, f"run in use by pid {demo_run['pid']} on host {HOST}", "(launch demo)")
    assert stopped["unchanged"]
    assert not is_locked(demo_run["run"] / "run.lock")


def test_writers_into_a_run_are_exclusive_readers_writing_elsewhere_need_no_lock(demo_run, holder, tmp_path):
    run = demo_run["run"]
    pid = holder(run)
    before = tree_hash(run)
    refused = {
        "export": launch("export", str(run)),
        "embed": launch("embed", str(run)),
        "curate": launch("curate", str(run)),
        "eval": launch("eval", str(run), "--data", str(DATA / "bloodmnist.npz"), "--fractions", "1"),
        "ingest": launch("ingest", str(run), "--tiles", str(DATA / "labelled_tiles" / "kather2016")),
    }
    for proc in refused.values():
        assert_refused(proc, f"run in use by pid {pid} on host {HOST}", "(a test holder)")
    assert tree_hash(run) == before
    exported = launch("export", str(run), "--out", str(tmp_path / "out" / "encoder.pt"))
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert (tmp_path / "out" / "encoder.pt").is_file() and tree_hash(run) == before


def test_a_new_ingest_holds_the_run_it_creates(tmp_path, holder):
    run = tmp_path / "new"
    bad = launch("ingest", str(run), "--tiles", str(tmp_path / "no-such-folder"))
    assert bad.returncode == 2 and not run.exists(), bad.stderr  # a refused new run leaves nothing
    run.mkdir()
    pid = holder(run)
    assert_refused(
        launch("ingest", str(run), "--tiles", str(DATA / "labelled_tiles" / "kather2016")), f"pid {pid}"
    )
    assert sorted(p.name for p in run.iterdir()) == ["run.lock"]


def _slides(tmp_path: Path, n: int) -> Path:
    folder = tmp_path / "slides"
    folder.mkdir()
    for i in range(n):
        os.symlink(demo_slide(), folder / f"slide-{i}.svs")
    return folder


def test_a_tile_array_keeps_its_run_after_its_launcher_is_killed(tmp_path):
    run = tmp_path / "run"
    argv = ["tile", str(run), "--slides", str(_slides(tmp_path, 3)), "--executor", "local"]
    argv += ["executor_tile.array_parallelism=2", "tile.tile_size=96"]
    first = subprocess.Popen(
        [sys.executable, "-m", "dcssl.launch", *argv],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    lock = run / "run.lock"
    wait_until(lambda: lock.is_file() and read_holder(lock).get("pids"), 300, "the first elements")
    os.killpg(first.pid, signal.SIGSTOP)  # launcher and elements frozen: the run cannot change
    elements = [int(p) for p in read_holder(lock)["pids"]]
    try:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        before = tree_hash(run)
        again = launch(*argv)
        element = subprocess.run(
            [sys.executable, "-m", "dcssl.tile", str(run), "--index", "2"], capture_output=True, text=True
        )
        assert tree_hash(run) == before
    finally:
        os.killpg(first.pid, signal.SIGCONT)  # the group lives on in the elements
    assert_refused(again, "local process(es) pid", str(elements[0]), f"pid {first.pid} on host {HOST}")
    assert_refused(element, "local process(es) pid")  # an element of no launcher of this run
    wait_until(lambda: not any(Path(f"/proc/{p}").exists() for p in elements), 300, "the elements to end")
    finished = launch(*argv)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert f"taking over from pid {first.pid}" in finished.stderr
    assert "slides: 3  done: 3  failed: 0  pending: 0" in finished.stdout


def test_a_tile_element_is_refused_while_another_writer_holds_the_run(tmp_path, holder):
    run = tmp_path / "run"
    prepared = subprocess.run(
        [sys.executable, "-m", "dcssl.tile", str(run), "--prepare", str(demo_slide())],
        capture_output=True,
        text=True,
    )
    assert prepared.returncode == 0, prepared.stderr
    pid = holder(run)
    before = tree_hash(run)
    element = subprocess.run(
        [sys.executable, "-m", "dcssl.tile", str(run), "--index", "0"], capture_output=True, text=True
    )
    assert_refused(element, f"run in use by pid {pid} on host {HOST}")
    assert tree_hash(run) == before


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_refused_train_job_stops_on_every_rank(demo_run, holder):
    """Two ranks as srun starts them (no torchrun agent to kill the rest): rank 0 is refused the
    lock; rank 1 must not wait for the distributed timeout (train.dist_timeout_s=1800)."""
    run = demo_run["run"]
    pid = holder(run)
    port = str(_free_port())
    ranks = []
    for rank in (0, 1):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        ranks.append(
            subprocess.Popen(
                [sys.executable, "-m", "dcssl.train", str(run), "--epoch", "1"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    results = [(p, *p.communicate(timeout=600)) for p in ranks]
    assert [p.returncode for p, _, _ in results] == [2, 2], [e[-2000:] for _, _, e in results]
    assert_refused(subprocess.CompletedProcess([], 2, "", results[0][2]), f"run in use by pid {pid}")
    assert "Traceback" not in results[1][2]


def test_a_refused_cluster_job_stops_on_every_rank(demo_run, holder):
    run = demo_run["run"]
    pid = holder(run)
    proc = subprocess.run(
        [mpiexec(), "-n", "2", sys.executable, "-m", "dcssl.cluster", str(run), "--epoch", "1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"run in use by pid {pid}" in lines[0], proc.stderr


def test_ctrl_c_on_a_local_step_puts_one_line_in_its_log(tmp_path):
    run = tmp_path / "run"
    tiled = launch(
        "tile", str(run), "--slides", str(demo_slide()), "--executor", "local", "tile.tile_size=96"
    )
    assert tiled.returncode == 0, tiled.stderr[-2000:]
    argv = [sys.executable, "-m", "dcssl.launch", "train", str(run), "--executor", "local", *TINY]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    log = run / "logs" / "train-0000.log"
    wait_until(lambda: log.is_file() and "segment 0: rank 0" in log.read_text(), 600, "the step to start")
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    text = log.read_text()
    assert "Traceback" not in text, text[-3000:]
    resume = f"interrupted; resume with: python -m dcssl.launch train {run} --executor local"
    assert text.strip().splitlines()[-1].startswith(resume), text[-2000:]
    assert [line for line in text.splitlines() if line.startswith("interrupted")] == [
        text.strip().splitlines()[-1]
    ]


def test_a_script_runs_under_holdrun_and_its_jobs_join_the_lease(tmp_path, holder):
    """What slurm/pipeline.sh does: what it starts runs under its hold; the job ids it writes
    stay in the record once it let go; refused, its command does not run."""
    run = tmp_path / "run"
    run.mkdir()
    script = f'echo 4242 >>"$DCSSL_RUN_JOBS"; {sys.executable} -m dcssl.launch plot {run}'
    hold = [sys.executable, "-m", "dcssl.holdrun", str(run), "--what", "slurm/pipeline.sh", "--"]
    proc = subprocess.run([*hold, "bash", "-c", script], capture_output=True, text=True)
    assert proc.returncode == 2 and "no metrics yet" in proc.stderr, proc.stderr  # plot got past the lock
    record = read_holder(run / "run.lock")
    assert record["jobs"] == ["4242"] and record["what"] == "slurm/pipeline.sh" and "released" in record
    pid = holder(run)
    marker = tmp_path / "ran"
    refused = subprocess.run([*hold, "touch", str(marker)], capture_output=True, text=True)
    assert_refused(refused, f"run in use by pid {pid} on host {HOST}")
    assert not marker.exists()


def test_status_writes_an_overdue_manifest_only_with_the_run_to_itself(tmp_path, holder):
    from dcssl.config import load_run_config
    from dcssl.slides.synthetic import Rect, write_slide
    from dcssl.tile.prepare import prepare_run
    from dcssl.tile.run import tile_element

    folder = tmp_path / "slides"
    folder.mkdir()
    for i in range(2):
        write_slide(folder / f"s{i}.tif", 1024, 768, [Rect(128 + 32 * i, 128, 512, 384)], tile=256)
    run = tmp_path / "run"
    refs = prepare_run(run, str(folder), load_run_config(run, None, ["tile.workers=1"]))
    for index in range(len(refs)):  # a plain array that ended without its finalize job
        tile_element(run, index, None, ["tile.workers=1"])
    manifest = run / "store" / "manifest.json"
    pid = holder(run)
    before = tree_hash(run)
    held = launch("status", str(run))
    assert held.returncode == 0, held.stderr
    assert "manifest: not yet" in held.stdout and f"pid {pid}" in held.stderr
    assert tree_hash(run) == before and not manifest.exists()  # the holder's to write
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not is_locked(run / "run.lock"), 30, "the holder to go")
    free = launch("status", str(run))
    assert free.returncode == 0 and f"manifest: {manifest}" in free.stdout, free.stderr
