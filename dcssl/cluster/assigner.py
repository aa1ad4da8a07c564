"""Nearest-centroid search for tiles of rows against fixed centroids, with Hamerly pruning.

argmin ‖x−c‖² = argmax (x·c − ‖c‖²/2): one float32 matrix product per tile and chunk of
centroids, ties to the lowest index. ``‖c‖²/2`` rides along as an extra coordinate (x gets a
constant −1), so the product gives the scores directly. Backends: ``numpy`` (OpenBLAS sgemm),
``torch`` (MKL), ``cuda`` (GPU).

Between Lloyd passes most rows keep their label. ``search`` takes each row's previous label and a
lower bound on its distance to every other centroid (from the runner-up score of its last scan,
minus how far any centroid has moved since, as in Hamerly 2010) and skips the scan when the
row's distance to its own centroid is below it — the label then provably still holds, so pruning
never changes a result. The bounds carry float32 error margins.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["Assigner", "TILE"]

# Rows per matrix-product tile (cache-sized; a tile never straddles a block).
TILE = 1024
# Scores of one tile against one chunk of centroids stay under this many bytes (cache-friendly,
# and k = 100 k never allocates a tile × k matrix).
SCORE_BYTES = 8 << 20


def _matmul_fn(backend: str) -> Callable:
    if backend == "numpy":
        return lambda a, b, out: np.matmul(a, b, out=out)
    import torch

    if backend == "torch":
        return lambda a, b, out: torch.mm(torch.from_numpy(a), torch.from_numpy(b),
                                          out=torch.from_numpy(out))
    raise ValueError(f"backend {backend!r}: choose numpy, torch or cuda")


class Assigner:
    """``assigner(x_tile, row_norms²) → (labels int64, squared distances float32)``."""

    def __init__(self, centroids: np.ndarray, backend: str = "numpy", tile: int = TILE):
        self.backend, self.tile = backend, tile
        self.matmul = None if backend == "cuda" else _matmul_fn(backend)
        self.buf = self.xa = None
        self.set_centroids(centroids)

    def set_centroids(self, centroids: np.ndarray) -> None:
        """Search against new centroids, reusing the work buffers (no heap growth per pass)."""
        c = np.ascontiguousarray(centroids, dtype=np.float32)
        if len(c) == 0:
            raise ValueError("assign needs at least one centroid")
        self.k, self.c = len(c), c
        self.scanned = 0  # rows of this pass scanned over all centroids (the rest were proven)
        self._movers: tuple[np.ndarray, np.ndarray] | None = None  # (movers, their c_t)
        if self.backend == "cuda":
            self._init_cuda(c)
            return
        self.chunk = max(1, min(self.k, SCORE_BYTES // (4 * self.tile)))
        half = 0.5 * np.einsum("ij,ij->i", c, c)
        self.c_t = [np.ascontiguousarray(np.concatenate(
            [c[j:j + self.chunk], half[j:j + self.chunk, None]], axis=1).T)
            for j in range(0, self.k, self.chunk)]
        if self.buf is None or self.buf.shape[1] != self.chunk or self.xa.shape[1] != c.shape[1] + 1:
            self.buf = np.empty((self.tile, self.chunk), dtype=np.float32)
            self.xa = np.full((self.tile, c.shape[1] + 1), -1.0, dtype=np.float32)
        c64 = c.astype(np.float64)
        self.half_max = float(0.5 * np.einsum("ij,ij->i", c64, c64).max())
        self.c_norm_max = float(np.sqrt(2.0 * self.half_max))
        # Relative float32 score error (d+1 products accumulated, doubled), and slack for float32
        # row sums (norms, distances) in the bound tests.
        self.fp32_err = (c.shape[1] + 1) * 2.0 ** -23
        self.rel = 1e-5 + (c.shape[1] + 1) * 2.0 ** -22

    def _init_cuda(self, c: np.ndarray) -> None:
        import torch

        self.c_gpu = torch.from_numpy(c).cuda()
        self.half_gpu = 0.5 * (self.c_gpu * self.c_gpu).sum(1)

    def __call__(self, xb: np.ndarray, xxb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.backend == "cuda":
            return self._cuda(xb, xxb)
        labels, dist, _ = self._full(xb, xxb, False)
        return labels, dist

    def search(self, xb: np.ndarray, xxb: np.ndarray, labels: np.ndarray | None = None,
               lower: np.ndarray | None = None, upper: np.ndarray | None = None,
               movers: np.ndarray | None = None, movers_extra: float = 0.0):
        """Nearest centroids of a tile, skipping rows whose bounds prove their label unchanged.

        ``labels``/``lower``/``upper``: each row's previous label, a lower bound on its distance
        to every *other* centroid and an upper bound on the distance to its own (both already
        moved with the centroids) — except the ``movers``, which moved up to ``movers_extra``
        further than ``lower`` allows for. A row is skipped when upper < lower by more than
        float32 error (Hamerly's test): first with ``lower − movers_extra``; where that fails,
        with the movers' distances measured; then with ``upper`` tightened to the exact
        distance. A skipped row's label provably is what a full scan would return. Returns
        (labels int64, lower, upper) — bounds float32, None on cuda; without previous labels
        every row is scanned.
        """
        if self.backend == "cuda":
            return self._cuda(xb, xxb)[0], None, None
        if labels is None:
            labels, dist, lower = self._full(xb, xxb, True)
            return labels, lower, self._upper(dist)
        labels, upper = labels.astype(np.int64), upper.copy()
        slack = 2.0 * self._margin(xxb)  # room for float32 error on both scores
        has_movers = movers is not None and len(movers) > 0
        bound = np.maximum(lower - np.float32(movers_extra), 0.0) if has_movers else lower.copy()
        check = np.flatnonzero(self._unsure(upper, bound, slack))
        if has_movers and len(check):  # only rows the movers could unsettle measure them
            bound[check] = np.minimum(lower[check], self._lower_from(
                xb[check], xxb[check], labels[check], movers))
            check = check[self._unsure(upper[check], bound[check], slack[check])]
        if len(check):  # tighten: the exact distance to the row's own centroid
            diff = xb[check] - self.c[labels[check]]
            upper[check] = self._upper(np.einsum("ij,ij->i", diff, diff))
            scan = check[self._unsure(upper[check], bound[check], slack[check])]
            if len(scan):
                labels[scan], dist, bound[scan] = self._full(xb[scan], xxb[scan], True)
                upper[scan] = self._upper(dist)
        return labels, bound, upper

    def _unsure(self, upper: np.ndarray, lower: np.ndarray, slack: np.ndarray) -> np.ndarray:
        return upper * upper * (1 + self.rel) + slack >= lower * lower

    def _upper(self, dist: np.ndarray) -> np.ndarray:
        return (np.sqrt(dist) * (1 + self.rel)).astype(np.float32)

    def _full(self, xb: np.ndarray, xxb: np.ndarray, want_lower: bool):
        m = len(xb)
        self.scanned += m
        self.xa[:m, :-1] = xb
        labels, best, second = self._scan(self.xa[:m], want_lower)
        if not want_lower:
            return labels, np.maximum(xxb - 2.0 * best, 0.0).astype(np.float32), None
        diff = xb - self.c[labels]
        dist = np.einsum("ij,ij->i", diff, diff)
        # Every other centroid scores ≤ second + margin/2: its squared distance is at least
        # xx − 2·second − margin.
        margin = self._margin(xxb)
        lower = np.sqrt(np.maximum(xxb - 2.0 * second - margin, 0.0)) * (1 - self.rel)
        return labels, dist, lower.astype(np.float32)

    def _lower_from(self, xb, xxb, labels, movers) -> np.ndarray:
        """Lower bound on each row's distance to the movers other than its own centroid."""
        m = len(xb)
        xa = self.xa[:m]
        xa[:, :-1] = xb
        score = xa @ self._movers_t(movers)  # x·c − ‖c‖²/2 per mover
        slot = np.minimum(np.searchsorted(movers, labels), len(movers) - 1)
        own = np.flatnonzero(movers[slot] == labels)
        score[own, slot[own]] = -np.inf
        closest = xxb - 2.0 * score.max(axis=1) - self._margin(xxb)
        return (np.sqrt(np.maximum(closest, 0.0)) * (1 - self.rel)).astype(np.float32)

    def _movers_t(self, movers: np.ndarray) -> np.ndarray:
        """The movers' columns of ``c_t`` — built once per pass, not per tile."""
        if self._movers is None or self._movers[0] is not movers:
            cm = self.c[movers]
            ct = np.concatenate([cm, 0.5 * np.einsum("ij,ij->i", cm, cm)[:, None]], axis=1)
            self._movers = (movers, np.ascontiguousarray(ct.T))
        return self._movers[1]

    def _margin(self, xxb: np.ndarray) -> np.ndarray:
        """Twice the bound on a float32 score's error, plus slack for float32 norms."""
        return 2.0 * self.fp32_err * (np.sqrt(xxb) * self.c_norm_max + self.half_max) + self.rel * xxb

    def _cuda(self, xb: np.ndarray, xxb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        xt = torch.from_numpy(xb).to(self.c_gpu.device)
        val, idx = torch.addmm(self.half_gpu, xt, self.c_gpu.T, beta=-1.0).max(dim=1)
        best = val.cpu().numpy()
        return idx.cpu().numpy(), np.maximum(xxb - 2.0 * best, 0.0).astype(np.float32)

    def _scan(self, xa: np.ndarray, second: bool):
        """Best label and score of every row over all chunks (and the runner-up score)."""
        m = len(xa)
        rows = np.arange(m)
        labels = best = runner_up = None
        for j, ct in enumerate(self.c_t):
            score = self.buf[:m, : ct.shape[1]]
            self.matmul(xa, ct, score)
            idx = score.argmax(axis=1)
            val = score[rows, idx]
            if second:
                score[rows, idx] = -np.inf
                chunk_second = score.max(axis=1)
            if j == 0:
                labels, best = idx, val
                runner_up = chunk_second if second else None
                continue
            if second:
                runner_up = np.maximum(np.maximum(runner_up, chunk_second), np.minimum(best, val))
            better = val > best  # strict: on a tie the earlier (lower) index stays
            labels[better] = idx[better] + j * self.chunk
            best[better] = val[better]
        return labels, best, runner_up
