"""hpc.submit on the live cluster: arrays larger than MaxArraySize are split and chained."""

import subprocess
import sys
from datetime import datetime

import cloudpickle
import pytest

from hpc.submit import ExecutorConfig, make_executor, submit_array, wait_all
from slurm_helpers import wait_until

cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _square(x):
    return x * x


@pytest.mark.slurm
def test_array_split_into_chained_chunks(slurm_cluster, submitit_folder):
    executor = make_executor(ExecutorConfig(kind="slurm", partition=slurm_cluster.partition,
                                            timeout_min=5), submitit_folder / "%j")
    jobs = submit_array(executor, _square, list(range(7)), parallelism=2, max_array_size=3)
    array_ids = sorted({job.job_id.split("_")[0] for job in jobs}, key=int)
    assert len(array_ids) == 3
    assert wait_all(jobs) == [x * x for x in range(7)]
    assert "dependency" not in executor.parameters
    spans = [wait_until(lambda a=a: _spans(a), 60, 1.0, f"sacct of {a}") for a in array_ids]
    for before, after in zip(spans, spans[1:]):  # chunk i+1 starts after chunk i ended
        assert min(start for start, _ in after) >= max(end for _, end in before)


def _spans(array_id: str) -> list[tuple[datetime, datetime]] | None:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", array_id, "--format=Start,End"],
                         capture_output=True, text=True, timeout=60).stdout
    rows = [line.split("|") for line in out.splitlines() if line.strip()]
    if not rows or any("Unknown" in r or "None" in r for row in rows for r in row):
        return None
    return [(datetime.fromisoformat(a), datetime.fromisoformat(b)) for a, b in rows]
