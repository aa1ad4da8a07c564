"""Per-step TensorBoard scalars of a train segment (RUN/tb/): loss, learning rate, images/s.

Written by rank 0 only, one event file per segment job; ``tensorboard --logdir RUN/tb`` shows
them beside the per-epoch scalars of dcssl.pipeline.report. Without tensorboard installed it is
a no-op (metrics.jsonl has the same figures per window).
"""

from __future__ import annotations

from pathlib import Path

from dcssl.paths import RunPaths

__all__ = ["StepScalars"]


class StepScalars:
    def __init__(self, run_dir: Path, enabled: bool):
        self._writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                return
            self._writer = SummaryWriter(log_dir=str(RunPaths(Path(run_dir)).tensorboard), flush_secs=30)

    def add(self, step: int, **scalars: float) -> None:
        if self._writer is not None:
            for name, value in scalars.items():
                self._writer.add_scalar(f"step/{name}", value, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
