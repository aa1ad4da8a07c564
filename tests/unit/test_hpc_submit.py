"""hpc.submit: the generated sbatch script (golden file) and the local executor's throttle."""

import sys
import time
from pathlib import Path

import cloudpickle
import pytest

from hpc.config import ConfigError, from_dict
from hpc.submit import ExecutorConfig, make_executor, submit_array, wait_all

# the job processes cannot import this test module: ship its functions by value
cloudpickle.register_pickle_by_value(sys.modules[__name__])

GOLDEN = Path(__file__).parent / "golden" / "sbatch_multinode.txt"


def test_sbatch_script_matches_golden_file():
    cfg = ExecutorConfig(
        kind="slurm",
        partition="gpu",
        nodes=2,
        tasks_per_node=4,
        cpus_per_task=8,
        gpus_per_node=4,
        mem_gb=64,
        timeout_min=240,
        srun_args=["--mpi=pmi2"],
        setup=["module load cuda"],
        account="lab",
    )
    executor = make_executor(cfg, "/LOGS/%j", job_name="dcssl-train")
    text = executor._make_submission_file_text("python -u -m submitit.core._submit /LOGS/%j", "UID")
    assert text == GOLDEN.read_text()


def test_executor_config_validation():
    with pytest.raises(ConfigError, match="nodes must be ≥ 1"):
        from_dict(ExecutorConfig, {"nodes": 0})
    with pytest.raises(ConfigError, match="a local executor has one node"):
        from_dict(ExecutorConfig, {"nodes": 2})
    with pytest.raises(ConfigError, match="kind: 'pbs' is not allowed"):
        from_dict(ExecutorConfig, {"kind": "pbs"})


def _record(item):
    start = time.time()
    time.sleep(1.0)
    return item * item, start, time.time()


def test_local_array_respects_the_throttle(tmp_path):
    executor = make_executor(ExecutorConfig(kind="local", timeout_min=5), tmp_path / "%j")
    jobs = submit_array(executor, _record, list(range(5)), parallelism=2)
    results = wait_all(jobs)
    assert [r[0] for r in results] == [0, 1, 4, 9, 16]
    events = sorted([(r[1], 1) for r in results] + [(r[2], -1) for r in results])
    running, peak = 0, 0
    for _, delta in events:
        running += delta
        peak = max(peak, running)
    assert peak <= 2


def _fail(_):
    raise ValueError("bad input")


def test_failed_job_names_its_log(tmp_path):
    executor = make_executor(ExecutorConfig(kind="local", timeout_min=5), tmp_path / "%j")
    jobs = submit_array(executor, _fail, [1], parallelism=1)
    with pytest.raises(Exception, match=r"failed \(.*\): see .*log\.err"):
        wait_all(jobs)
