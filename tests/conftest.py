"""Shared fixtures: the live SLURM cluster (`slurm_cluster`) and per-test submitit folders.

`slurm_cluster` runs `.ci/slurm-up.sh` once per session (idempotent: a running cluster is only
checked). Under `CI=true` a cluster that cannot start fails the test loudly with the script's
output; elsewhere, no `sbatch` on PATH (or a failed bring-up) skips the test.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SLURM_UP = REPO_ROOT / ".ci" / "slurm-up.sh"
INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"
SLURM_UP_TIMEOUT_S = 600  # a cold start may include `apt-get install`
PARTITION = "debug"  # the one partition .ci/slurm-up.sh makes, holding every node


def pytest_configure(config: pytest.Config) -> None:
    # Also declared in pyproject.toml; repeated here so the markers exist whatever the rootdir.
    config.addinivalue_line(
        "markers",
        "slurm: needs the live SLURM cluster (fails under CI=true when it cannot start, skips elsewhere)",
    )
    # A suite started with `&` from a non-interactive shell inherits SIGINT ignored, and so would
    # every launcher it starts: the Ctrl-C tests would then test nothing. Give them a terminal's.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


@dataclass(frozen=True)
class SlurmCluster:
    """What the tests need to know about the running cluster."""

    partition: str
    """Partition holding every node (the default partition)."""
    nodes: list[str]
    """Node names in that partition, e.g. ['vm', 'vnode1', 'vnode2']."""
    cpus_per_node: int
    """CPUs each node advertises (8 on the CI cluster)."""
    log_dir: str = "/var/log/dcssl-slurm"
    """Where the daemons log (slurmctld.log, slurmd-<node>.log, ...)."""
    bringup_output: str = field(default="", repr=False)
    """stdout+stderr of .ci/slurm-up.sh."""

    def __getitem__(self, key: str):  # dict-style access too: cluster["partition"]
        return getattr(self, key)


def _fail_or_skip(message: str) -> None:
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    """Bring up (or check) the live cluster; returns its partition and nodes."""
    if not in_ci() and shutil.which("sbatch") is None:
        pytest.skip("no SLURM here (sbatch not found); set CI=true to bring one up")
    try:
        proc = subprocess.run(
            ["bash", str(SLURM_UP)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=SLURM_UP_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as err:
        _fail_or_skip(
            f".ci/slurm-up.sh did not finish in {SLURM_UP_TIMEOUT_S}s:\n{err.stdout or ''}{err.stderr or ''}"
        )
    output = (proc.stdout or "") + (proc.stderr or "")
    if proc.returncode != 0:
        _fail_or_skip(f"SLURM cluster did not come up (.ci/slurm-up.sh exit {proc.returncode}):\n{output}")

    env_partition = PARTITION
    info = subprocess.run(
        ["sinfo", "-h", "-N", "-p", env_partition, "-o", "%N %c"], capture_output=True, text=True, timeout=60
    )
    rows = [line.split() for line in info.stdout.splitlines() if line.strip()]
    if info.returncode != 0 or not rows:
        _fail_or_skip(
            f"sinfo shows no nodes in partition {env_partition!r}: "
            f"{info.stdout}{info.stderr}\nbring-up output:\n{output}"
        )
    nodes = sorted({r[0] for r in rows})
    cpus = min(int(r[1]) for r in rows)

    # Jobs unpickle functions defined in test modules (tests/integration/*.py) and import the
    # project: make both importable in the job, whatever the job's working directory.
    extra = [str(REPO_ROOT), str(INTEGRATION_DIR)]
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(extra + ([old] if old else []))
    return SlurmCluster(partition=env_partition, nodes=nodes, cpus_per_node=cpus, bringup_output=output)


@pytest.fixture
def submitit_folder(tmp_path: Path) -> Path:
    """A fresh, never reused folder for submitit's files.

    Job ids restart at 1 when the cluster's state is wiped, so a folder keyed by `%j` from an
    earlier run could hand back a stale result: every test gets its own.
    """
    folder = tmp_path / f"submitit-{uuid.uuid4().hex[:12]}"
    folder.mkdir(parents=True)
    return folder
