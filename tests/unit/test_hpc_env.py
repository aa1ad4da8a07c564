"""hpc.env: node-list expansion and rank detection under each launcher's variables."""

import pytest

from hpc.env import default_port, detect_env, expand_nodelist


@pytest.mark.parametrize(
    "nodelist, hosts",
    [
        ("node01", ["node01"]),
        ("node[01-03,07]", ["node01", "node02", "node03", "node07"]),
        ("a[1-2],b3,c[09-11]", ["a1", "a2", "b3", "c09", "c10", "c11"]),
        ("gpu-[1-2]-ib", ["gpu-1-ib", "gpu-2-ib"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
        ("x[8-10]", ["x8", "x9", "x10"]),
        ("", []),
    ],
)
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


def test_single_process_without_launcher():
    env = detect_env({})
    assert (env.rank, env.world_size, env.local_rank, env.source) == (0, 1, 0, "single")
    assert not env.is_distributed


def test_srun_task():
    env = detect_env(
        {
            "SLURM_JOB_ID": "4242",
            "SLURM_STEP_ID": "0",
            "SLURM_PROCID": "3",
            "SLURM_LOCALID": "1",
            "SLURM_NTASKS": "4",
            "SLURM_NODEID": "1",
            "SLURM_JOB_NODELIST": "n[07-08]",
            "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
            "SLURM_RESTART_COUNT": "1",
        }
    )
    assert (env.rank, env.local_rank, env.world_size, env.node_rank) == (3, 1, 4, 1)
    assert env.nodes == ("n07", "n08") and env.master_addr == "n07"
    assert env.local_world_size == 2 and env.source == "slurm"
    assert env.master_port == default_port("4242") and env.extra["restart_count"] == 1


def test_batch_script_is_one_process():
    # the batch step sees SLURM_NTASKS=4 and SLURM_PROCID=0 but it is not one of the 4 tasks
    env = detect_env(
        {
            "SLURM_JOB_ID": "7",
            "SLURM_PROCID": "0",
            "SLURM_NTASKS": "4",
            "SLURM_JOB_NODELIST": "n1",
            "SLURM_ARRAY_JOB_ID": "6",
            "SLURM_ARRAY_TASK_ID": "1",
        }
    )
    assert env.world_size == 1 and env.source == "single"
    assert env.array_job_id == "6" and env.array_task_id == 1 and env.job_id == "7"


def test_uneven_tasks_per_node():
    env = detect_env(
        {
            "SLURM_JOB_ID": "1",
            "SLURM_STEP_ID": "0",
            "SLURM_PROCID": "4",
            "SLURM_NTASKS": "5",
            "SLURM_NODEID": "2",
            "SLURM_JOB_NODELIST": "n[1-3]",
            "SLURM_STEP_TASKS_PER_NODE": "2(x2),1",
        }
    )
    assert env.local_world_size == 1


def test_torchrun_wins_over_slurm():
    env = detect_env(
        {
            "RANK": "1",
            "WORLD_SIZE": "2",
            "LOCAL_RANK": "1",
            "LOCAL_WORLD_SIZE": "2",
            "MASTER_ADDR": "h",
            "MASTER_PORT": "1234",
            "SLURM_JOB_ID": "1",
            "SLURM_STEP_ID": "0",
            "SLURM_PROCID": "0",
            "SLURM_NTASKS": "1",
        }
    )
    assert (env.rank, env.world_size, env.master_addr, env.master_port, env.source) == (
        1,
        2,
        "h",
        1234,
        "torchrun",
    )


def test_submitit_local_tasks():
    env = detect_env(
        {
            "SUBMITIT_LOCAL_JOB_ID": "999",
            "SUBMITIT_LOCAL_NTASKS": "2",
            "SUBMITIT_LOCAL_GLOBALID": "1",
            "SUBMITIT_LOCAL_LOCALID": "1",
            "SUBMITIT_LOCAL_NODEID": "0",
        }
    )
    assert (env.rank, env.world_size, env.local_rank, env.source) == (1, 2, 1, "submitit-local")


def test_ports_differ_between_jobs():
    assert default_port("100") != default_port("101")
    assert 20000 <= default_port("123456789") < 32000
