"""Append-only JSON-lines files (ledger, metrics): concurrent writers never interleave a line."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from hpc.config import read_text_file

__all__ = ["append_jsonl", "read_jsonl"]


def append_jsonl(path: str | Path, record: dict) -> None:
    """Append one record (with a ``time`` stamp) as a single O_APPEND write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": round(time.time(), 3), **record}, default=str) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_jsonl(path: str | Path) -> list[dict]:
    """All whole records; a line cut short by a crash mid-write is skipped. A file that is not
    UTF-8 text (binary, UTF-16) is a one-line ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in read_text_file(path).splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
