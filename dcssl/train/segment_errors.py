"""What a training segment raises: bad input or state (one line naming the thing and the fix),
and a loss gone non-finite."""

from __future__ import annotations

__all__ = ["SegmentError", "NonFiniteLoss"]


class SegmentError(RuntimeError):
    """Bad input or state, described in one line that names the thing and the fix."""


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or Inf; nothing is saved, the checkpoints on disk are kept."""
