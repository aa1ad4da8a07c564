"""Per-step TensorBoard scalars of a train segment (RUN/tb/): loss, learning rate, images/s.

Written by rank 0 only, one event file per segment job; ``tensorboard --logdir RUN/tb`` shows
them beside the per-epoch scalars of dcssl.pipeline.report. Without tensorboard installed it is
a no-op (metrics.jsonl has the same figures per window).
"""

from __future__ import annotations

from pathlib import Path

from dcssl.tbwriter import ScalarWriter

__all__ = ["StepScalars"]


class StepScalars:
    def __init__(self, run_dir: Path, enabled: bool):
        self._writer = ScalarWriter(run_dir, enabled)

    def add(self, step: int, **scalars: float) -> None:
        for name, value in scalars.items():
            self._writer.add(f"step/{name}", value, step)

    def close(self) -> None:
        self._writer.close()
