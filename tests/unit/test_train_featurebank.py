"""The feature bank: processes write interleaved rows of one file (sharing pages) without losing
any, any number of readers read it, unvisited rows keep the previous epoch's values."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest

from dcssl.epochs.features import (
    BankWriter,
    bank_dir,
    fill_unvisited,
    finalize_bank,
    is_complete,
    open_bank,
    prepare_bank,
    read_meta,
    write_bank,
)
from hpc.mpi import shard_range

N, DIM, WRITERS = 1000, 24, 3


def _rows(index: np.ndarray) -> np.ndarray:
    return (index[:, None] * 0.001 + np.arange(DIM)[None, :] * 0.01).astype(np.float16)


def _write_share(path: str, rank: int) -> None:
    """One writer process: every WRITERS-th row, in shuffled batches (rows of one page interleave
    across processes, as DDP ranks do)."""
    mine = np.arange(rank, N, WRITERS)
    np.random.default_rng(rank).shuffle(mine)
    writer = BankWriter(path, N, DIM)
    for chunk in np.array_split(mine, 7):
        writer.write_rows(chunk, _rows(chunk))
    writer.close()


def _reader_sum(args: tuple[str, int, int]) -> tuple[int, float]:
    run_dir, rank, size = args
    bank = open_bank(run_dir, 1)
    start, stop = shard_range(N, rank, size)
    return stop - start, float(bank[start:stop].astype(np.float64).sum())


def test_writers_in_separate_processes_fill_every_row(tmp_path: Path):
    path = prepare_bank(tmp_path, 1, N, DIM, init_from=None)
    assert not is_complete(tmp_path, 1)
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_write_share, args=(str(path), r)) for r in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    with pytest.raises(FileNotFoundError, match="not complete"):
        open_bank(tmp_path, 1)
    finalize_bank(tmp_path, 1, N, DIM, "train", 0.0)
    bank = open_bank(tmp_path, 1)
    assert bank.shape == (N, DIM) and bank.dtype == np.float16
    assert np.array_equal(bank, _rows(np.arange(N)))
    assert read_meta(tmp_path, 1) == {
        "n": N,
        "dim": DIM,
        "dtype": "float16",
        "epoch": 1,
        "source": "train",
        "stale_fraction": 0.0,
    }
    total = float(np.asarray(bank, dtype=np.float64).sum())
    for readers in (1, 2, 5):  # any number of readers, whatever wrote it
        with ctx.Pool(readers) as pool:
            parts = pool.map(_reader_sum, [(str(tmp_path), r, readers) for r in range(readers)])
        assert sum(n for n, _ in parts) == N
        assert sum(s for _, s in parts) == pytest.approx(total, rel=1e-12)


def test_new_epoch_starts_from_the_previous_bank_once(tmp_path: Path):
    prepare_bank(tmp_path, 0, N, DIM, init_from=None)
    writer = BankWriter(bank_dir(tmp_path, 0) / "embeddings.f16", N, DIM)
    writer.write_rows(np.arange(N), _rows(np.arange(N)))
    writer.close()
    finalize_bank(tmp_path, 0, N, DIM, "extract", 0.0)

    path = prepare_bank(tmp_path, 1, N, DIM, init_from=0)
    visited = np.array([5, 6, 7, 900])
    writer = BankWriter(path, N, DIM)
    writer.write_rows(visited, np.ones((4, DIM), dtype=np.float16))
    writer.close()
    assert prepare_bank(tmp_path, 1, N, DIM, init_from=0) == path  # a resumed run keeps rows
    assert sum(fill_unvisited(tmp_path, 1, 0, r, 2) for r in range(2)) == N - 4
    finalize_bank(tmp_path, 1, N, DIM, "train", 1 - 4 / N)
    bank = open_bank(tmp_path, 1)
    assert np.array_equal(bank[visited], np.ones((4, DIM), dtype=np.float16))
    stale = np.setdiff1d(np.arange(N), visited)
    assert np.array_equal(bank[stale], _rows(stale))
    assert read_meta(tmp_path, 1)["stale_fraction"] == pytest.approx(0.996)
    with pytest.raises(ValueError, match="proj_dim"):
        prepare_bank(tmp_path, 2, N, DIM + 1, init_from=1)
    writer = BankWriter(path, N, DIM)
    with pytest.raises(IndexError):
        writer.write_rows(np.array([N]), np.zeros((1, DIM)))
    writer.close()


def test_write_bank_from_an_array_is_complete_and_exact(tmp_path: Path):
    x = np.random.default_rng(0).standard_normal((300, 7)).astype(np.float16)
    write_bank(tmp_path, 2, x)
    assert is_complete(tmp_path, 2) and not is_complete(tmp_path, 1)
    assert read_meta(tmp_path, 2)["n"] == 300 and read_meta(tmp_path, 2)["dim"] == 7
    np.testing.assert_array_equal(open_bank(tmp_path, 2), x)


def test_bank_without_a_copy_equals_a_full_copy_bank_over_three_epochs(tmp_path: Path):
    """Each epoch two ranks write random partial visits (buffered, flushed in sorted runs), then
    three ranks fill the unvisited rows: row for row what copying the previous bank would give."""
    rng = np.random.default_rng(3)
    first = rng.standard_normal((N, DIM)).astype(np.float16)
    write_bank(tmp_path, 0, first, source="extract")
    reference = first.copy()  # the full-copy bank: last epoch's rows, visited ones overwritten
    for epoch in (1, 2, 3):
        path = prepare_bank(tmp_path, epoch, N, DIM, init_from=epoch - 1)
        assert path.stat().st_blocks * 512 < N * DIM * 2 // 10  # sparse: nothing was copied
        visited = rng.choice(N, size=int(N * rng.uniform(0.2, 0.7)), replace=False)
        rows = rng.standard_normal((visited.size, DIM))
        rows = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float16)
        for rank in range(2):  # interleaved rows of shared pages, several flushes each
            writer = BankWriter(path, N, DIM, buffer_rows=50)
            for chunk in np.array_split(np.flatnonzero(np.arange(visited.size) % 2 == rank), 9):
                writer.write_rows(visited[chunk], rows[chunk])
            writer.close()
        reference[visited] = rows
        filled = [fill_unvisited(tmp_path, epoch, epoch - 1, r, 3, block_rows=128) for r in range(3)]
        assert sum(filled) == N - visited.size
        finalize_bank(tmp_path, epoch, N, DIM, "train", 1 - visited.size / N)
        np.testing.assert_array_equal(open_bank(tmp_path, epoch), reference)
