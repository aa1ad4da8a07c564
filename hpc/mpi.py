"""MPI helpers: contiguous shard ranges and in-place numpy collectives on buffers.

Buffers go through mpi4py's upper-case (buffer) interface, never pickling; float64 sums are used
by callers that need bit-identical results regardless of the rank count.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import numpy as np

__all__ = ["mpiexec", "world", "shard_range", "allreduce_", "allreduce", "bcast_", "gather_counts"]


def mpiexec() -> str:
    """The mpiexec that matches this Python's mpi4py: the one beside the interpreter (the PyPI
    mpich wheel puts it there, not always on PATH), else the first on PATH."""
    beside = Path(sys.executable).parent / "mpiexec"
    return str(beside) if beside.exists() else (shutil.which("mpiexec") or "mpiexec")


def world():
    """MPI.COMM_WORLD (a one-rank world when the program was not started by mpiexec/srun)."""
    from mpi4py import MPI

    return MPI.COMM_WORLD


def shard_range(n: int, rank: int, size: int) -> tuple[int, int]:
    """Half-open row range [start, stop) of rank's contiguous share of n rows.

    The first n % size ranks get one extra row, so shares differ by at most one.
    """
    if size <= 0 or not 0 <= rank < size:
        raise ValueError(f"rank {rank} is not in a world of size {size}")
    base, extra = divmod(n, size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def _mpi_op(op: str):
    from mpi4py import MPI

    return {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}[op]


def allreduce_(array: np.ndarray, comm=None, op: str = "sum") -> np.ndarray:
    """Reduce a contiguous numpy array across ranks in place and return it."""
    comm = comm or world()
    if not array.flags.c_contiguous:
        raise ValueError("allreduce_ needs a C-contiguous array")
    if comm.Get_size() > 1:
        from mpi4py import MPI

        comm.Allreduce(MPI.IN_PLACE, array, op=_mpi_op(op))
    return array


def allreduce(array: np.ndarray, comm=None, op: str = "sum") -> np.ndarray:
    """Reduce into a fresh array (the input is left untouched)."""
    return allreduce_(np.ascontiguousarray(array).copy(), comm, op)


def bcast_(array: np.ndarray, comm=None, root: int = 0) -> np.ndarray:
    """Broadcast root's array into every rank's array of the same shape and dtype, in place."""
    comm = comm or world()
    if comm.Get_size() > 1:
        comm.Bcast(array, root=root)
    return array


def gather_counts(count: int, comm=None) -> np.ndarray:
    """Every rank's integer count, on every rank (e.g. rows per shard)."""
    comm = comm or world()
    out = np.zeros(comm.Get_size(), dtype=np.int64)
    out[comm.Get_rank()] = count
    return allreduce_(out, comm)
