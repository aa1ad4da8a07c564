"""hpc.mpi: shard ranges and collectives on real MPI ranks (mpiexec from the PyPI mpich wheel)."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hpc.mpi import allreduce_, mpiexec, shard_range


@pytest.mark.parametrize("n, size", [(10, 3), (3, 5), (0, 2), (1_000_003, 7)])
def test_shard_ranges_tile_the_rows(n, size):
    ranges = [shard_range(n, r, size) for r in range(size)]
    assert ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    lengths = [b - a for a, b in ranges]
    assert max(lengths) - min(lengths) <= 1


def test_shard_range_rejects_bad_rank():
    with pytest.raises(ValueError):
        shard_range(10, 3, 3)


def test_single_rank_collectives_are_identity():
    x = np.arange(4.0)
    assert allreduce_(x).tolist() == [0.0, 1.0, 2.0, 3.0]


def test_allreduce_and_bcast_on_two_ranks(tmp_path):
    script = textwrap.dedent("""
        import numpy as np
        from hpc.mpi import allreduce_, bcast_, gather_counts, world
        comm = world()
        rank, size = comm.Get_rank(), comm.Get_size()
        assert size == 2, size
        total = allreduce_(np.array([rank + 1.0, 10.0 * rank]), comm)
        top = allreduce_(np.array([rank], dtype=np.int64), comm, op="max")
        seed = bcast_(np.array([42 if rank == 0 else -1], dtype=np.int64), comm)
        counts = gather_counts(rank * 5 + 1, comm)
        lines = comm.gather(f"{rank} {total.tolist()} {int(top[0])} {int(seed[0])} {counts.tolist()}")
        if rank == 0:  # one writer: two ranks printing at once can interleave their lines
            print("\\n".join(lines), flush=True)
    """)
    out = subprocess.run(
        [mpiexec(), "-n", "2", sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    lines = sorted(out.stdout.strip().splitlines())
    assert lines == ["0 [3.0, 10.0] 1 42 [1, 6]", "1 [3.0, 10.0] 1 42 [1, 6]"]
