"""Atomic files and checkpoints: temp file in the same folder + fsync + rename; newest valid wins.

A reader never sees a half-written file: a crash (even kill -9) mid-write leaves only a temp file,
which is ignored (and removed by the next save of the same checkpoints), and the previous
checkpoint stays loadable. Files get the mode the umask gives (``mkstemp`` alone would make them
0600, unreadable to a lab mate of a group-readable run). A full disk is one ``DiskFull`` line
naming the folder, what the write needed and what is free. Checkpoints carry a SHA-256 sidecar
written before the rename and load with ``torch.load(weights_only=True)``: plain tensors and
JSON-able values only, so a file planted in a shared run cannot run code as the next reader.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hpc.integrity import (
    DamagedFile,
    recorded_digests,
    sha256_file,
    sidecar_path,
    verify_sidecar,
    write_sidecar,
)

__all__ = [
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "CheckpointManager",
    "DiskFull",
    "file_mode",
    "load_finite",
    "as_disk_full",
    "report_disk_full",
    "temp_files",
    "torch_bytes",
]

log = logging.getLogger(__name__)
_MB = 1 << 20


class DiskFull(OSError):
    """No space left where a file was being written: one line with what was needed and is free."""

    def __init__(self, folder: Path, needed: int):
        free = shutil.disk_usage(folder).free
        super().__init__(
            errno.ENOSPC,
            f"no space left on {folder}: needs ~{max(needed, _MB) / _MB:.0f} MB, has {free / _MB:.0f} MB; "
            "free some space (or move the run) and run the same command again",
        )

    def __str__(self) -> str:
        return self.strerror


def as_disk_full(err: BaseException, where: Path) -> DiskFull | None:
    """``err`` as a DiskFull (naming the folder it happened in, else ``where``), None if it is not one."""
    if isinstance(err, DiskFull) or not _is_disk_full(err):
        return err if isinstance(err, DiskFull) else None
    filename = getattr(err, "filename", None)
    return DiskFull(Path(filename).parent if filename else where, 0)


def report_disk_full(err: OSError, where: Path) -> int:
    """A stage entry point's answer to an OSError: a full disk is its one line on stderr (the line
    the launcher repeats) and exit 1; anything else is re-raised."""
    disk_full = as_disk_full(err, where)
    if disk_full is None:
        raise err
    print(f"error: {disk_full}", file=sys.stderr, flush=True)
    return 1


def file_mode() -> int:
    """0666 minus the process umask — what ``open`` would give a new file."""
    try:
        with open("/proc/self/status") as status:  # reading it leaves the umask alone (threads)
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_disk_full(err: BaseException) -> bool:
    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    # torch.save reports a short write as "unexpected pos …" without an errno
    return isinstance(err, RuntimeError) and "unexpected pos" in str(err)


def temp_files(final: str | os.PathLike) -> list[Path]:
    """Leftover temp files of ``atomic_path(final)`` (a killed writer's)."""
    final = Path(final)
    return sorted(final.parent.glob(f".{glob_escape(final.name)}.*.tmp")) if final.parent.is_dir() else []


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


@contextlib.contextmanager
def atomic_path(
    path: str | os.PathLike, fsync: bool = True, sidecar: bool = False, size_hint: int = 0
) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on clean exit it is fsynced and renamed onto ``path``.

    On an exception the temp file is removed and ``path`` is untouched; a full disk raises
    ``DiskFull``. ``sidecar``: record the content's SHA-256 in ``path.sha256`` before the rename.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    except OSError as err:
        raise DiskFull(final.parent, size_hint) if _is_disk_full(err) else err from None
    os.fchmod(fd, file_mode())
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        previous: list[str] = []
        if sidecar:
            new = sha256_file(tmp)
            previous = (recorded_digests(final) or []) if final.exists() else []
            write_sidecar(final, [new, *previous])
        os.replace(tmp, final)
        if fsync:
            _fsync_dir(final.parent)
        if previous:
            write_sidecar(final, [new])
    except BaseException as err:
        written = tmp.stat().st_size if tmp.exists() else 0
        tmp.unlink(missing_ok=True)
        if _is_disk_full(err) and not isinstance(err, DiskFull):
            raise DiskFull(final.parent, max(size_hint, written)) from None
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes, sidecar: bool = False) -> None:
    with atomic_path(path, sidecar=sidecar, size_hint=len(data)) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def torch_bytes(obj: Any) -> bytes:
    """``torch.save`` into memory, so the size is known before the disk is touched."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _torch_save(obj: Any, path: Path) -> None:
    data = torch_bytes(obj)
    try:
        path.write_bytes(data)
    except OSError as err:
        raise DiskFull(path.parent, len(data)) if _is_disk_full(err) else err from None


def _torch_load(path: Path) -> Any:
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def _non_finite(value: Any, where: str = "") -> str | None:
    """The key path of the first floating tensor holding NaN/Inf inside ``value``, else None."""
    import torch

    if isinstance(value, torch.Tensor):
        return where or "tensor" if value.is_floating_point() and not bool(value.isfinite().all()) else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _non_finite(item, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def load_finite(path: Path) -> Any:
    """``torch.load(weights_only=True)``, and DamagedFile when a weight is NaN or Inf: such a
    checkpoint loads, but training or exporting from it would only spread the damage."""
    state = _torch_load(path)
    bad = _non_finite(state)
    if bad:
        raise DamagedFile(path, f"holds non-finite values ({bad})")
    return state


class CheckpointManager:
    """Numbered checkpoints ``<prefix>-<step:09d>.pt`` in one folder, newest ``keep`` kept.

    ``save_fn(obj, path)`` / ``load_fn(path)`` default to torch.save / torch.load(weights_only)
    (tensors, numbers, strings, lists, dicts); pass others for non-torch state. A ``load_fn`` may
    raise ``DamagedFile`` for a file that loads but holds nonsense (non-finite weights).
    Every checkpoint has a SHA-256 sidecar; one that does not match is damaged, never loaded.
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
        self.damaged: list[DamagedFile] = []
        """Checkpoints the last ``load_latest`` skipped, newest first."""
        self._cleaned = False

    def path_for(self, step: int) -> Path:
        return self.folder / f"{self.prefix}-{step:09d}.pt"

    def steps(self) -> list[int]:
        """Steps of the complete checkpoints on disk, oldest first."""
        if not self.folder.is_dir():
            return []
        found = (self._pattern.match(p.name) for p in self.folder.iterdir())
        return sorted(int(m[1]) for m in found if m)

    def stale_temps(self) -> list[Path]:
        """Temp files of checkpoint writes that were killed."""
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob(f".{glob_escape(self.prefix)}-*.pt*.tmp"))

    def save(self, state: Any, step: int) -> Path:
        """Write atomically (with its checksum), then delete all but the newest ``keep``.

        The first save of a manager removes temp files a killed earlier write left (one writer
        per folder: the run's rank 0)."""
        if not self._cleaned:
            for stale in self.stale_temps():
                stale.unlink(missing_ok=True)
            self._cleaned = True
        path = self.path_for(step)
        with atomic_path(path, sidecar=True) as tmp:
            self._save_fn(state, tmp)
        for old in self.steps()[: -self.keep]:
            self.path_for(old).unlink(missing_ok=True)
            sidecar_path(self.path_for(old)).unlink(missing_ok=True)
        return path

    def load(self, step: int) -> Any:
        """The state of checkpoint ``step``; DamagedFile when it fails its checksum or won't load."""
        path = self.path_for(step)
        verify_sidecar(path)
        try:
            return self._load_fn(path)
        except DamagedFile:
            raise
        except Exception as err:
            raise DamagedFile(path, f"does not load ({str(err).splitlines()[0][:200]})") from None

    def load_latest(self) -> tuple[int, Any] | None:
        """(step, state) of the newest checkpoint that verifies and loads; damaged ones are skipped
        (and listed in ``self.damaged``) — callers that must not go back check that list."""
        self.damaged = []
        for step in reversed(self.steps()):
            try:
                return step, self.load(step)
            except DamagedFile as err:
                self.damaged.append(err)
                log.warning("checkpoint %s; trying the one before", err)
        return None
