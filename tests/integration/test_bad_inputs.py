"""Every subcommand, given a bad input, exits 2 with exactly one line on stderr and leaves the
run directory byte-identical; a run's settings are a record (changes on finished work refused,
epoch-safe changes announced and recorded, ``--redo`` one-off). Real processes on a real run."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_launch_loop import TINY  # the tiny loop those tests run

from dcssl.launch.demo import demo_slide

DATA = Path(__file__).resolve().parents[1] / "data"


def launch(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dcssl.launch", *args], capture_output=True, text=True, timeout=timeout
    )


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """``tiled``: the shipped slide tiled at 96 px (236 tiles), default k and batch;
    ``trained``: the same after a bootstrap and one epoch of the tiny loop (k = 6)."""
    root = tmp_path_factory.mktemp("bad-inputs")
    tiled = root / "tiled"
    ok(launch("tile", str(tiled), "--slides", str(demo_slide()), "--executor", "local", "tile.tile_size=96"))
    trained = root / "trained"
    shutil.copytree(tiled, trained)
    ok(launch("train", str(trained), "--executor", "local", *TINY, "loop.epochs=1"))
    return {"tiled": tiled, "trained": trained}


def tree_hash(root: Path) -> str:
    """Names, modes and bytes of everything under root (symlinks by target)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_symlink():
            digest.update(os.readlink(path).encode())
        elif path.is_file():
            digest.update(path.read_bytes())
        digest.update(str(path.stat().st_mode if not path.is_symlink() else 0).encode())
    return digest.hexdigest()


def assert_refused(proc: subprocess.CompletedProcess, *needles: str) -> None:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# argv after the run directory, per subcommand (R is the run directory)
COMMANDS = {
    "tile": ["tile", "R"],
    "ingest": ["ingest", "R", "--tiles", str(DATA / "labelled_tiles" / "kather2016")],
    "train": ["train", "R", "--executor", "local"],
    "cluster": ["cluster", "R", "--epoch", "1", "--executor", "local"],
    "redo": ["cluster", "R", "--epoch", "1", "--executor", "local", "--redo"],
    "export": ["export", "R"],
    "embed": ["embed", "R"],
    "curate": ["curate", "R"],
    "eval": ["eval", "R", "--data", str(DATA / "bloodmnist.npz")],
    "demo": ["demo", "--out", "R"],
    "status": ["status", "R"],
    "plot": ["plot", "R"],
}
OVERRIDES = {
    "typo-section": ("tiel.tile_size=96", "tiel"),
    "no-section": ("tile_size=96", "did you mean tile.tile_size"),
    "section-value": ("tile=5", "tile"),
    "unknown-key": ("tile.bogus=1", "tile.bogus"),
    "nan": ("tile.target_mpp=.nan", "tile.target_mpp"),
    "inf": ("train.optim.lr=.inf", "train.optim.lr"),
    "negative-epochs": ("loop.epochs=-1", "epochs"),
}
CONFIG_FILES = {
    "unknown-key-file": (b"cluster:\n  kk: 3\n", "cluster.kk"),
    "scalar-section-file": (b"tile: 5\n", "tile"),
    "unknown-section-file": (b"tiel:\n  tile_size: 96\n", "tiel"),
    "wrong-type-file": (b"train:\n  data:\n    batch_size: many\n", "train.data.batch_size"),
    "binary-file": ((DATA / "openslide-small.svs").read_bytes(), "not a UTF-8 text file"),
    "utf16-file": ("train:\n  seed: 1\n".encode("utf-16"), "not a UTF-8 text file"),
    "folder": (None, "is a folder"),
}
RUN_FILES = {
    "binary-config.yaml": ("config.yaml", (DATA / "openslide-small.svs").read_bytes()),
    "utf16-config.yaml": ("config.yaml", "loop:\n  epochs: 1\n".encode("utf-16")),
    "utf16-state.json": ("state.json", '{"steps": {}}'.encode("utf-16")),
    "binary-metrics.jsonl": ("metrics.jsonl", b"\x00\xff\xfe\x89PNG\r\n"),
    "binary-ledger": ("store/ledger.jsonl", (DATA / "openslide-small.svs").read_bytes()[:4096]),
}
OVERRIDE_TAKERS = [c for c in COMMANDS if c not in ("status", "plot")]  # demo last: it takes no --config
CASES = (
    [
        (c, "override", o)
        for c in OVERRIDE_TAKERS
        for o in OVERRIDES
        if c in ("tile", "train") or o == "typo-section"
    ]
    + [(c, "config", f) for i, c in enumerate(OVERRIDE_TAKERS[:-1]) for f in list(CONFIG_FILES)[i % 3 :: 3]]
    + [(c, "run-file", f) for i, c in enumerate(COMMANDS) for f in [list(RUN_FILES)[i % len(RUN_FILES)]]]
)


@pytest.mark.parametrize("command,kind,case", CASES, ids=[f"{c}-{k}-{x}" for c, k, x in CASES])
def test_bad_input_exits_2_with_one_line_and_the_run_unchanged(runs, tmp_path, command, kind, case):
    run = tmp_path / "run"
    shutil.copytree(runs["trained"], run, symlinks=True)
    argv = [str(run) if a == "R" else a for a in COMMANDS[command]]
    if kind == "override":
        value, needle = OVERRIDES[case]
        argv.append(value)
    elif kind == "config":
        content, needle = CONFIG_FILES[case]
        config = tmp_path / "config-file"
        config.mkdir() if content is None else config.write_bytes(content)
        argv += ["--config", str(config)]
    else:
        name, content = RUN_FILES[case]
        (run / name).write_bytes(content)
        needle = name
    before = tree_hash(tmp_path)
    assert_refused(launch(*argv), needle)
    assert tree_hash(tmp_path) == before


def test_settings_the_data_cannot_hold_are_refused_up_front(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["tiled"], run)
    before = tree_hash(run)
    # the defaults (k = 1,000, batch 256) on a 236-tile store: said before any work
    assert_refused(
        launch("train", str(run), "--executor", "local"), "cluster.k=1000", "236 tiles", "cluster.k≤236"
    )
    big = launch("train", str(run), "--executor", "local", "cluster.k=8", "train.data.batch_size=300")
    assert_refused(big, "train.data.batch_size=300", "per rank 236")
    assert tree_hash(run) == before


def test_manifests_that_cannot_be_tiled_are_refused_up_front(tmp_path):
    header = "id\tfilename\tmd5\tsize\tstate\n"
    manifests = {
        "header-only": (header, "lists no slides"),
        "no-size": ("id\tfilename\tmd5\tstate\nu1\ta.svs\tm\tok\n", "missing column 'size'"),
        "same-id": (header + "u1\ta.svs\tm\t1\tok\nu1\tb.svs\tm\t1\tok\n", "listed twice"),
    }
    for name, (text, needle) in manifests.items():
        manifest = tmp_path / f"{name}.tsv"
        manifest.write_text(text)
        assert_refused(launch("tile", str(tmp_path / name), "--slides", str(manifest)), needle)
        assert not (tmp_path / name).exists()


def test_read_only_output_folders_are_refused(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["trained"], run)
    locked = tmp_path / "locked"
    locked.mkdir()
    if os.geteuid() == 0:  # root writes through permission bits: a read-only mount it is
        subprocess.run(["mount", "--bind", "-o", "ro", str(locked), str(locked)], check=True)
    else:
        locked.chmod(0o555)
    try:
        before = tree_hash(tmp_path)
        assert_refused(launch("export", str(run), "--out", str(locked / "encoder.pt")), str(locked), "--out")
        assert_refused(launch("embed", str(run), "--out", str(locked / "sub" / "f.h5")), str(locked), "--out")
        assert tree_hash(tmp_path) == before
    finally:
        if os.geteuid() == 0:
            subprocess.run(["umount", str(locked)], check=True)


def _record(run: Path, step: str) -> dict:
    return yaml.safe_load((run / "settings" / f"{step}.yaml").read_text())


def test_a_runs_settings_are_a_record(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["trained"], run)
    before = tree_hash(run)
    assert_refused(launch("train", str(run), "cluster.k=16"), "cluster.k=16", "cluster.k=6", "--redo")
    assert_refused(launch("train", str(run), "cluster.method=rcc"), "cluster.method='rcc'")
    assert_refused(launch("export", str(run), "train.model.width=16"), "train.model.width=16")
    assert_refused(launch("cluster", str(run), "--epoch", "1", "--redo", "cluster.k=999"), "cluster.k=999")
    assert tree_hash(run) == before  # the refused redo deleted nothing

    # a one-off redo of the labels epoch 1 trained on: swapped in, recorded as one-off, the
    # run's config untouched, and export still says what trained the weights (k = 6)
    ok(launch("cluster", str(run), "--epoch", "0", "--executor", "local", "--redo", "cluster.k=4"))
    assert json.loads((run / "labels" / "epoch-0000" / "stats.json").read_text())["k"] == 4
    assert _record(run, "cluster-0000")["one_off"] is True
    assert yaml.safe_load((run / "config.yaml").read_text())["cluster"]["k"] == 6
    assert not (run / ".redo").exists()
    ok(launch("export", str(run)))
    info = json.loads((run / "export" / "encoder.json").read_text())
    assert info["epoch"] == 1 and info["k"] == 6 and info["config"]["cluster"]["k"] == 6

    # an epoch-safe change is announced and recorded from the epoch it applies to
    more = ok(launch("train", str(run), "--executor", "local", "loop.epochs=2"))
    assert "setting changed: loop.epochs: 1 → 2 (applies from epoch 2)" in more.stderr
    assert _record(run, "train-0001")["settings"]["loop"]["epochs"] == 1
    assert _record(run, "train-0002")["settings"]["loop"]["epochs"] == 2
    assert _record(run, "cluster-0002")["settings"]["cluster"]["k"] == 6  # the redo did not stick
    assert yaml.safe_load((run / "config.yaml").read_text())["loop"]["epochs"] == 2

    ok(launch("export", str(run)))
    info = json.loads((run / "export" / "encoder.json").read_text())
    assert info["epoch"] == 2 and info["k"] == 6 and info["config"]["loop"]["epochs"] == 2


def test_a_config_given_to_tile_holds_for_train(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("train:\n  model: {arch: resnet18, width: 8}\ncluster: {k: 7}\n")
    run = tmp_path / "run"
    slides = tmp_path / "slides"
    slides.mkdir()
    (slides / "one.svs").symlink_to(demo_slide())
    ok(launch("tile", str(run), "--slides", str(slides), "--executor", "local", "--config", str(config)))
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["model"]["width"] == 8 and saved["cluster"]["k"] == 7
    assert saved["tile"]["tile_size"] == 224


def test_ctrl_c_ends_with_one_line_and_the_resume_command(runs, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["tiled"], run)
    argv = [sys.executable, "-m", "dcssl.launch", "train", str(run), "--executor", "local", *TINY]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 600
    while not (run / "state.json").is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"interrupted; resume with: python -m dcssl.launch train {run} --executor local")


JOBS = {
    "train": ["dcssl.train", "R", "--epoch", "1"],
    "cluster": ["dcssl.cluster", "R", "--epoch", "1"],
    "tile": ["dcssl.tile", "R", "--index", "0"],
}


@pytest.mark.parametrize("job", list(JOBS))
def test_job_entry_points_validate_the_whole_document(runs, tmp_path, job):
    """What sbatch scripts run: a config file with a mistake in another stage's section is
    refused too (the loader reads the whole document, whichever stage runs)."""
    run = tmp_path / "run"
    shutil.copytree(runs["trained"], run)
    config = tmp_path / "other-stage.yaml"
    config.write_text("eval:\n  knn_kk: 3\n")
    before = tree_hash(tmp_path)
    argv = [str(run) if a == "R" else a for a in JOBS[job]]
    proc = subprocess.run(
        [sys.executable, "-m", *argv, "--config", str(config)], capture_output=True, text=True
    )
    assert_refused(proc, "eval.knn_kk")
    assert tree_hash(tmp_path) == before
