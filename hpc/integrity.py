"""Checksums of the files a run writes, recorded where their completion is recorded.

Whole files get a SHA-256 (``sha256sum``-compatible, so a person can check one by hand); single
tiles get a CRC32, cheap enough to check on every read. A file whose bytes no longer match what
was recorded raises ``DamagedFile`` naming it — never silently used.

A sidecar ``<file>.sha256`` is written *before* its file is renamed into place (see
``hpc.checkpoint.atomic_path(..., sidecar=True)``), so every complete file has one; a sidecar
without its file is a leftover of a crash and means nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "DamagedFile",
    "sha256_file",
    "crc32",
    "sidecar_path",
    "write_sidecar",
    "read_sidecar",
    "recorded_digests",
    "verify_sidecar",
    "digests",
    "verify_digests",
    "seal",
    "check_sealed",
]

_CHUNK = 8 << 20


class DamagedFile(ValueError):
    """A file's bytes differ from the checksum recorded when it was completed."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"{path}: {why}")
        self.path, self.why = Path(path), why


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def crc32(data: bytes | memoryview) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def sidecar_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def write_sidecar(final: Path, digests_: list[str]) -> None:
    """Record ``final``'s digest(s) beside it: one line each, ``sha256sum`` format. Two lines only
    while a file is being replaced (the new one's and the old one's), so a crash between the
    sidecar and the rename leaves whichever file is there verifiable."""
    from hpc.checkpoint import atomic_write_text  # atomic_path calls this module: import late

    atomic_write_text(sidecar_path(final), "".join(f"{d}  {Path(final).name}\n" for d in digests_))


def read_sidecar(path: str | os.PathLike) -> str | None:
    """The recorded digest of ``path`` (the newest), or None when it has no sidecar."""
    recorded = recorded_digests(path)
    return None if recorded is None else (recorded[0] if recorded else "")


def recorded_digests(path: str | os.PathLike) -> list[str] | None:
    side = sidecar_path(path)
    if not side.is_file():
        return None
    return [line.split(maxsplit=1)[0] for line in side.read_text().splitlines() if line.strip()]


def verify_sidecar(path: str | os.PathLike, required: bool = True) -> None:
    """DamagedFile unless ``path`` matches its sidecar (a missing one is damage when ``required``)."""
    path = Path(path)
    recorded = recorded_digests(path)
    if recorded is None:
        if required:
            raise DamagedFile(path, f"no checksum ({sidecar_path(path).name}) recorded with it")
        return
    try:
        actual = sha256_file(path)
    except OSError as err:
        raise DamagedFile(path, f"unreadable ({err.strerror or err})") from None
    if actual not in recorded:
        raise DamagedFile(path, "checksum mismatch (the file changed after it was written)")


def digests(folder: Path, names: Iterable[str]) -> dict[str, str]:
    """{name: sha256} of files in ``folder``, to record in a completion marker."""
    return {name: sha256_file(Path(folder) / name) for name in names}


def verify_digests(folder: Path, recorded: dict[str, str]) -> None:
    """DamagedFile for the first file of ``folder`` that differs from ``recorded``."""
    for name, expected in recorded.items():
        path = Path(folder) / name
        if not path.is_file():
            raise DamagedFile(path, "missing")
        if sha256_file(path) != expected:
            raise DamagedFile(path, "checksum mismatch (the file changed after it was written)")


def seal(folder: str | os.PathLike, names: Iterable[str], **fields) -> None:
    """Write ``folder/COMPLETE`` (atomic, last) recording ``fields`` and the files' SHA-256."""
    from hpc.checkpoint import atomic_write_text

    folder = Path(folder)
    document = {**fields, "sha256": digests(folder, names)}
    atomic_write_text(folder / "COMPLETE", json.dumps(document, indent=1) + "\n")


def check_sealed(folder: str | os.PathLike) -> dict:
    """The COMPLETE document of ``folder`` after checking every file it records; DamagedFile else."""
    marker = Path(folder) / "COMPLETE"
    try:
        document = json.loads(marker.read_text() or "{}")
    except (OSError, ValueError) as err:
        raise DamagedFile(marker, f"unreadable ({err})") from None
    if not isinstance(document, dict) or not isinstance(document.get("sha256"), dict):
        raise DamagedFile(marker, "records no checksums")
    verify_digests(Path(folder), document["sha256"])
    return document
