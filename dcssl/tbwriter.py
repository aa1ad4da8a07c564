"""TensorBoard scalars under RUN/tb/: the one writer of its event files (per-step ones from the
train segment's rank 0, per-epoch ones from dcssl.pipeline.report).

tensorboard's own event writer, not torch's SummaryWriter: importing torch costs the clustering
job (which never needs it) ≈ 2 CPU-seconds per epoch. Without tensorboard installed every call
is a no-op; metrics.jsonl carries the same figures.
"""

from __future__ import annotations

import time
from pathlib import Path

from dcssl.paths import RunPaths

__all__ = ["ScalarWriter"]


class ScalarWriter:
    """One new event file per writer (per job), as torch's SummaryWriter does."""

    def __init__(self, run_dir: Path, enabled: bool = True, flush_secs: float = 30):
        self._writer = None
        if not enabled:
            return
        try:
            from tensorboard.compat.proto.event_pb2 import Event
            from tensorboard.compat.proto.summary_pb2 import Summary
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
        except ImportError:
            return
        self._event, self._summary = Event, Summary
        self._writer = EventFileWriter(str(RunPaths(Path(run_dir)).tensorboard), flush_secs=flush_secs)

    def add(self, tag: str, value: float, step: int) -> None:
        if self._writer is None:
            return
        scalar = self._summary(value=[self._summary.Value(tag=tag, simple_value=float(value))])
        self._writer.add_event(self._event(wall_time=time.time(), step=int(step), summary=scalar))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __enter__(self) -> ScalarWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
