"""The cluster job's view of excluded tiles: fit on the kept rows only, label the rest -1.

Each rank keeps its contiguous row range minus the excluded tiles; the kept rows of all ranks, in
rank order, form one compacted array whose global row numbers do not depend on the number of
ranks, so sampling for the k-means++ seeding stays the same for any R.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcssl.exclusion import read_mask
from hpc.mpi import gather_counts

__all__ = ["KeptRows", "kept_rows"]


@dataclass(frozen=True)
class KeptRows:
    keep: np.ndarray | None
    """This rank's rows that take part (None: all of them, nothing is excluded)."""
    row0: int
    """Global (compacted) row number of this rank's first kept row."""
    n: int
    """Kept rows over all ranks."""

    def take(self, rows: np.ndarray) -> np.ndarray:
        return rows if self.keep is None else np.asarray(rows)[self.keep]

    def expand(self, labels: np.ndarray) -> np.ndarray:
        """Labels of the kept rows → labels of every row of the range (excluded: -1)."""
        if self.keep is None:
            return labels
        out = np.full(len(self.keep), -1, dtype=labels.dtype)
        out[self.keep] = labels
        return out


def kept_rows(run_dir: Path, n: int, start: int, stop: int, comm) -> KeptRows:
    mask = read_mask(run_dir, n)
    excluded = int(mask.sum()) if mask is not None else 0
    if excluded == 0:
        return KeptRows(None, start, n)
    keep = ~mask[start:stop]
    counts = gather_counts(int(keep.sum()), comm)
    rank = comm.Get_rank()
    return KeptRows(keep, int(counts[:rank].sum()), int(counts.sum()))
