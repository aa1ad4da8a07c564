"""DeepCluster training on the tile store: one segment (an epoch, or a step budget) per job.

``python -m dcssl.train RUN_DIR --epoch E [train.key=value ...]`` or
``dcssl.train.segment.run_segment(run_dir, epoch, cfg)`` runs a segment as one rank of whatever
launched it (srun, submitit, torchrun or a single process). Modules: config (the ``train``
section), data (store dataset), augment (batch augmentations), sampler (uniform over clusters),
model (ResNet + projection + resettable head), trainer (one rank's objects), extract
(eval-mode pass), segment (the flow, checkpoints, preemption). The feature bank it writes and
the labels it reads are ``dcssl.epochs``'.
"""

from dcssl.train.config import TrainConfig

__all__ = ["TrainConfig"]
