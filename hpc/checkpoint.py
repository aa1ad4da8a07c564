"""Atomic files and checkpoints: temp file in the same folder + fsync + rename; newest valid wins.

A reader never sees a half-written file: a crash (even kill -9) mid-write leaves only a temp file,
which is ignored, and the previous checkpoint stays loadable.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_bytes", "atomic_write_text", "CheckpointManager"]

log = logging.getLogger(__name__)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, fsync: bool = True) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on clean exit it is fsynced and renamed onto ``path``.

    On an exception the temp file is removed and ``path`` is untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, final)
        if fsync:
            _fsync_dir(final.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _torch_save(obj: Any, path: Path) -> None:
    import torch

    torch.save(obj, path)


def _torch_load(path: Path) -> Any:
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


class CheckpointManager:
    """Numbered checkpoints ``<prefix>-<step:09d>.pt`` in one folder, newest ``keep`` kept.

    ``save_fn(obj, path)`` / ``load_fn(path)`` default to torch.save / torch.load (which also
    carry numpy arrays); pass others for non-torch state.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        prefix: str = "ckpt",
        keep: int = 2,
        save_fn: Callable[[Any, Path], None] = _torch_save,
        load_fn: Callable[[Path], Any] = _torch_load,
    ):
        if keep < 1:
            raise ValueError("keep must be ≥ 1")
        self.folder = Path(folder)
        self.prefix = prefix
        self.keep = keep
        self._save_fn = save_fn
        self._load_fn = load_fn
        self._pattern = re.compile(rf"^{re.escape(prefix)}-(\d+)\.pt$")

    def path_for(self, step: int) -> Path:
        return self.folder / f"{self.prefix}-{step:09d}.pt"

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk, oldest first."""
        if not self.folder.is_dir():
            return []
        found = (self._pattern.match(p.name) for p in self.folder.iterdir())
        return sorted(int(m[1]) for m in found if m)

    def save(self, state: Any, step: int) -> Path:
        """Write atomically, then delete all but the newest ``keep``."""
        path = self.path_for(step)
        with atomic_path(path) as tmp:
            self._save_fn(state, tmp)
        for old in self.steps()[: -self.keep]:
            self.path_for(old).unlink(missing_ok=True)
        return path

    def load_latest(self) -> tuple[int, Any] | None:
        """(step, state) of the newest checkpoint that loads; corrupt ones are skipped."""
        for step in reversed(self.steps()):
            try:
                return step, self._load_fn(self.path_for(step))
            except Exception as err:  # a truncated or corrupt file: fall back to the one before
                log.warning(
                    "checkpoint %s does not load (%s); trying the one before", self.path_for(step), err
                )
        return None
