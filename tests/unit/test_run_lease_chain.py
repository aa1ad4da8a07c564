"""Which jobs of a run's lease still hold it, from the queue's states (dcssl.runlock.chain_holders).

The states are what ``squeue -t all`` reports; the live-queue side is in
tests/integration/test_hpc_slurm.py (test_afterok_chain_holds_the_run_until_its_last_job_ends)."""

import pytest

from dcssl.runlock import chain_holders

RUN, PEND_DEP, PEND_RES = ("RUNNING", "None"), ("PENDING", "Dependency"), ("PENDING", "Resources")
DONE, FAILED, NEVER = (
    ("COMPLETED", "None"),
    ("FAILED", "NonZeroExitCode"),
    ("PENDING", "DependencyNeverSatisfied"),
)


@pytest.mark.parametrize(
    ("states", "holders"),
    [
        ({"1": RUN, "2": PEND_DEP, "3": PEND_DEP}, ["1", "2", "3"]),  # a chain under way
        ({"1": DONE, "2": PEND_DEP, "3": PEND_DEP}, ["2", "3"]),  # between links: 1 done, 2 not yet started
        ({"1": DONE, "2": DONE, "3": DONE}, []),  # finished
        ({"1": FAILED, "2": PEND_DEP, "3": PEND_DEP}, []),  # behind a failed link nothing runs
        ({"1": FAILED, "2": NEVER, "3": NEVER}, []),
        ({"2": PEND_DEP, "3": PEND_DEP}, []),  # 1 forgotten by the queue: 2 would have started long ago
        ({"1": PEND_RES, "2": PEND_DEP}, ["1", "2"]),  # queued for resources is queued
        ({"1": DONE, "2": RUN, "3": PEND_DEP}, ["2", "3"]),
    ],
)
def test_chain_holders(states, holders):
    assert list(chain_holders(["1", "2", "3"], states)) == holders
