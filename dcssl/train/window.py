"""Loss and throughput accumulated between two progress lines of a training segment."""

from __future__ import annotations

__all__ = ["LossWindow"]


class LossWindow:
    """Loss and throughput since the last progress line."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.loss_sum, self.steps, self.images, self.seconds = 0.0, 0, 0, 0.0

    def add(self, loss: float, images: int, seconds: float) -> None:
        self.loss_sum += loss
        self.steps += 1
        self.images += images
        self.seconds += seconds

    @property
    def mean(self) -> float:
        return self.loss_sum / max(self.steps, 1)
