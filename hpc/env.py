"""Who am I? Rank, local rank, world size and nodes, from srun, torchrun, submitit or nothing.

Every launcher exports the same facts under different names. `detect_env` reads them in a fixed
order of precedence (torchrun, then an srun/submitit-on-SLURM task, then submitit's local executor,
then a single process) so the same program runs unchanged under each of them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["DistEnv", "detect_env", "expand_nodelist", "default_port"]


@dataclass(frozen=True)
class DistEnv:
    """The facts a distributed program needs about its place in the job."""

    rank: int = 0
    """Global rank of this process, 0 ≤ rank < world_size."""
    local_rank: int = 0
    """Rank among the processes on this node; the GPU index to use."""
    world_size: int = 1
    """Number of processes in the job step."""
    local_world_size: int = 1
    """Number of processes on this node."""
    node_rank: int = 0
    """Index of this node among the job's nodes."""
    nodes: tuple[str, ...] = ()
    """Host names of the job's nodes, expanded, in SLURM order."""
    master_addr: str = "127.0.0.1"
    """Rendezvous host: the first node of the job."""
    master_port: int = 29500
    """Rendezvous port; derived from the job id under SLURM so concurrent jobs do not collide."""
    job_id: str | None = None
    """SLURM (or submitit local) job id, None outside a job."""
    array_job_id: str | None = None
    """The array's job id for array tasks."""
    array_task_id: int | None = None
    """This element's index in the array."""
    source: str = "single"
    """Where the facts came from: torchrun | slurm | submitit-local | single."""
    extra: dict = field(default_factory=dict, compare=False)
    """Launcher-specific leftovers (e.g. restart count)."""

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_BRACKET = re.compile(r"^(?P<prefix>[^\[]*)\[(?P<body>[^\]]+)\](?P<rest>.*)$")


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside [...]."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in (s.strip() for s in parts) if p]


def _expand_range(item: str) -> list[str]:
    if "-" not in item:
        return [item]
    lo, hi = item.split("-", 1)
    width = len(lo)  # zero padding is kept: 01-03 → 01, 02, 03
    return [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]


def _expand_host(host: str) -> list[str]:
    match = _BRACKET.match(host)
    if match is None:
        return [host]
    heads = [match["prefix"] + s for item in match["body"].split(",") for s in _expand_range(item)]
    tails = _expand_host(match["rest"]) if match["rest"] else [""]
    return [h + t for h in heads for t in tails]


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a compressed SLURM node list, e.g. ``node[01-03,07],gpu[1-2]-ib`` → host names.

    Equivalent to ``scontrol show hostnames`` without needing SLURM installed.
    """
    hosts: list[str] = []
    for part in _split_top_level(nodelist):
        hosts.extend(_expand_host(part))
    return hosts


def default_port(job_id: str | None) -> int:
    """A rendezvous port that differs between concurrent jobs: 20000 + job id mod 12000.

    The range stays clear of SLURM's daemons (68xx) and Linux's ephemeral ports (32768+).
    """
    if not job_id:
        return 29500
    digits = re.sub(r"\D", "", str(job_id)) or "0"
    return 20000 + int(digits) % 12000


def _int(env: Mapping[str, str], key: str, default: int) -> int:
    value = env.get(key)
    return int(value) if value not in (None, "") else default


def _tasks_on_node(tasks_per_node: str, node_rank: int) -> int:
    """Parse SLURM_STEP_TASKS_PER_NODE like '2(x3),1' and pick the count of one node."""
    counts: list[int] = []
    for part in tasks_per_node.split(","):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if m:
            counts.extend([int(m[1])] * int(m[2] or 1))
    return counts[node_rank] if node_rank < len(counts) else (counts[-1] if counts else 1)


def _array_fields(env: Mapping[str, str]) -> dict:
    task = env.get("SLURM_ARRAY_TASK_ID")
    return {
        "array_job_id": env.get("SLURM_ARRAY_JOB_ID"),
        "array_task_id": int(task) if task not in (None, "") else None,
    }


def _from_torchrun(env: Mapping[str, str]) -> DistEnv:
    world = _int(env, "WORLD_SIZE", 1)
    local_world = _int(env, "LOCAL_WORLD_SIZE", world)
    return DistEnv(
        rank=_int(env, "RANK", 0),
        local_rank=_int(env, "LOCAL_RANK", 0),
        world_size=world,
        local_world_size=local_world,
        node_rank=_int(env, "GROUP_RANK", _int(env, "RANK", 0) // max(local_world, 1)),
        nodes=tuple(expand_nodelist(env.get("SLURM_JOB_NODELIST", ""))),
        master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
        master_port=_int(env, "MASTER_PORT", 29500),
        job_id=env.get("SLURM_JOB_ID"),
        source="torchrun",
        **_array_fields(env),
    )


def _from_slurm_task(env: Mapping[str, str]) -> DistEnv:
    nodes = tuple(expand_nodelist(env.get("SLURM_STEP_NODELIST") or env["SLURM_JOB_NODELIST"]))
    node_rank = _int(env, "SLURM_NODEID", 0)
    job_id = env.get("SLURM_JOB_ID")
    per_node = env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE", "1")
    return DistEnv(
        rank=_int(env, "SLURM_PROCID", 0),
        local_rank=_int(env, "SLURM_LOCALID", 0),
        world_size=_int(env, "SLURM_STEP_NUM_TASKS", _int(env, "SLURM_NTASKS", 1)),
        local_world_size=_tasks_on_node(per_node, node_rank),
        node_rank=node_rank,
        nodes=nodes,
        master_addr=env.get("MASTER_ADDR") or (nodes[0] if nodes else "127.0.0.1"),
        master_port=_int(env, "MASTER_PORT", default_port(job_id)),
        job_id=job_id,
        source="slurm",
        extra={"restart_count": _int(env, "SLURM_RESTART_COUNT", 0)},
        **_array_fields(env),
    )


def _from_submitit_local(env: Mapping[str, str]) -> DistEnv:
    world = _int(env, "SUBMITIT_LOCAL_NTASKS", 1)
    job_id = env.get("SUBMITIT_LOCAL_JOB_ID")
    return DistEnv(
        rank=_int(env, "SUBMITIT_LOCAL_GLOBALID", 0),
        local_rank=_int(env, "SUBMITIT_LOCAL_LOCALID", 0),
        world_size=world,
        local_world_size=world,
        node_rank=_int(env, "SUBMITIT_LOCAL_NODEID", 0),
        nodes=("localhost",),
        master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
        master_port=_int(env, "MASTER_PORT", default_port(job_id)),
        job_id=job_id,
        source="submitit-local",
    )


def _in_srun_step(env: Mapping[str, str]) -> bool:
    # The batch script itself also sees SLURM_PROCID=0 and SLURM_NTASKS=N, but it is one process:
    # only a task launched by srun (a job step) carries SLURM_STEP_ID.
    return "SLURM_JOB_ID" in env and "SLURM_STEP_ID" in env and "SLURM_PROCID" in env


def detect_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Read this process's place in the job from the environment (``os.environ`` by default)."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return _from_torchrun(env)
    if _in_srun_step(env):
        return _from_slurm_task(env)
    if "SUBMITIT_LOCAL_JOB_ID" in env:
        return _from_submitit_local(env)
    job_id = env.get("SLURM_JOB_ID")
    return DistEnv(
        nodes=tuple(expand_nodelist(env.get("SLURM_JOB_NODELIST", ""))),
        master_port=_int(env, "MASTER_PORT", default_port(job_id)),
        job_id=job_id,
        **_array_fields(env),
    )
