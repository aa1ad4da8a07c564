"""One training segment as the current rank, phase by phase (bootstrap, train, extract, done);
``dcssl.train.segment.run_segment`` sets up the job and runs it."""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from dcssl.epochs.features import (
    BankWriter,
    embeddings_path,
    fill_unvisited,
    finalize_bank,
    is_complete,
    prepare_bank,
)
from dcssl.epochs.trained import done_path, write_done
from dcssl.jsonl import append_jsonl
from dcssl.paths import RunPaths
from dcssl.store import Store
from dcssl.tbwriter import ScalarWriter
from dcssl.train.config import TrainConfig
from dcssl.train.epoch_labels import load_labels
from dcssl.train.extract import extract_pass
from dcssl.train.resume import checkpoint_manager, resume_point
from dcssl.train.sampler import labels_digest
from dcssl.train.segment_errors import NonFiniteLoss, SegmentError
from dcssl.train.trainer import Trainer, all_reduce_sum
from dcssl.train.window import LossWindow
from hpc.distributed import barrier
from hpc.env import DistEnv
from hpc.preemption import Preempted, PreemptionFlag

__all__ = ["SegmentRun"]

log = logging.getLogger(__name__)


class SegmentRun:
    """One segment on this rank: its phase, checkpoints, counters and summary."""

    def __init__(
        self,
        run_dir: Path,
        epoch: int,
        cfg: TrainConfig,
        env: DistEnv,
        device: torch.device,
        flag: PreemptionFlag,
        on_step,
    ):
        self.run_dir, self.epoch, self.cfg, self.env, self.device = run_dir, epoch, cfg, env, device
        self.flag, self.on_step = flag, on_step
        self.ckpt = checkpoint_manager(run_dir, cfg.keep_checkpoints)
        self.n_tiles = Store(RunPaths(run_dir).store).n_tiles
        self.stats = {"loss_sum": 0.0, "steps": 0, "images": 0, "train_seconds": 0.0, "seconds": 0.0}
        self.t0 = time.monotonic()
        self.rows_written = 0  # feature-bank rows this rank wrote in this job

    # ------------------------------------------------------------------ flow
    def run(self) -> dict:
        if self.epoch == 0:
            return self._bootstrap()
        started = time.monotonic()
        labels, k = load_labels(self.run_dir, self.epoch - 1, self.n_tiles)
        loaded = time.monotonic()
        trainer = Trainer(self.run_dir, self.cfg, self.env, self.device, k)
        entered = time.monotonic()
        phase = self._enter(trainer, labels, k)
        # relabelling = reading the new labels + swapping them into the sampler + resetting the
        # head in place; building the trainer is a once-per-job cost, not a per-epoch one
        self.stats.setdefault("relabel_s", (loaded - started) + (time.monotonic() - entered))
        if phase == "train":
            if self.cfg.feature_source == "train":
                self._prepare_bank(init_from=self._previous_bank())
            if not self._train(trainer):
                return self._summary(trainer, complete=False)
            phase = "extract" if self.cfg.feature_source == "extract" else "done"
            self._save(trainer, phase)
        if phase == "extract":
            self._extract(trainer)
        return self._finish(trainer)

    def _bootstrap(self) -> dict:
        trainer = Trainer(self.run_dir, self.cfg, self.env, self.device, k=1)
        state = self._load(trainer)
        barrier()  # every rank has looked before rank 0 writes the first checkpoint
        if state is None:
            self._save(trainer, "extract")  # epoch 1 starts from exactly these weights
        elif int(state["epoch"]) == 0:
            self._restore_stats(state)
        else:
            raise SegmentError(
                f"{self.ckpt.folder}: checkpoints are past epoch 0, so the "
                f"bootstrap ran already; restore {done_path(self.run_dir, 0)} "
                f"or start a new run directory"
            )
        if state is None or state["phase"] == "extract":
            self._extract(trainer)
        return self._finish(trainer)

    def _enter(self, trainer: Trainer, labels: np.ndarray, k: int) -> str:
        """Load the newest checkpoint and put the trainer where this segment must go on."""
        state = self._load(trainer)
        if state is None:
            raise SegmentError(
                f"{self.ckpt.folder}: no train checkpoint, so not even the bootstrap (epoch 0) "
                f"weights are there; run train segment 0 first or start a new run directory"
            )
        last, phase = int(state["epoch"]), state["phase"]
        if last > self.epoch:
            raise SegmentError(
                f"{self.ckpt.folder}: checkpoints are from epoch {last}, past "
                f"epoch {self.epoch}; this segment ran already — restore "
                f"{done_path(self.run_dir, self.epoch)} or use a new run directory"
            )
        if last < self.epoch:
            if last != self.epoch - 1 or phase != "done":
                raise SegmentError(
                    f"train segment {last} has not finished (checkpoint phase "
                    f"{phase!r}); run it before segment {self.epoch}"
                )
            trainer.start_epoch(self.epoch, labels, k)
            return "train"
        self._restore_stats(state)
        position = int(state["position"])
        if phase == "train":
            if state["labels_digest"] != labels_digest(labels):
                raise SegmentError(
                    f"labels of epoch {self.epoch - 1} changed since segment "
                    f"{self.epoch} began; restore them or delete {self.ckpt.folder}"
                    f" checkpoints of epoch {self.epoch}"
                )
            if int(state["world_size"]) != self.env.world_size:
                log.warning(
                    "world size changed %s → %d: resuming near global sample %d (exact "
                    "resume needs the same world size)",
                    state["world_size"],
                    self.env.world_size,
                    position * int(state["world_size"]),
                )
                position = position * int(state["world_size"]) // self.env.world_size
        trainer.resume_epoch(self.epoch, labels, position)
        log.info(
            "resuming epoch %d in phase %s at step %d (global step %d)",
            self.epoch,
            phase,
            trainer.step_in_epoch,
            trainer.global_step,
        )
        return phase

    # ------------------------------------------------------------------ checkpoints
    def _load(self, trainer: Trainer) -> dict | None:
        latest = resume_point(self.run_dir, self.cfg.keep_checkpoints)
        if latest is None:
            return None
        step, state = latest
        try:
            trainer.load_state_dict(state)
        except RuntimeError as err:
            first = " ".join(line.strip() for line in str(err).strip().splitlines()[:2])
            raise SegmentError(
                f"{self.ckpt.path_for(step)}: does not fit this train.model "
                f"({first}); use the run's model settings or a new run directory"
            ) from None
        return state

    def _save(self, trainer: Trainer, phase: str) -> None:
        if self.env.is_main:
            self.stats["seconds"] = self._seconds()
            self.ckpt.save(
                {**trainer.state_dict(), "phase": phase, "stats": dict(self.stats)}, trainer.global_step
            )

    def _restore_stats(self, state: dict) -> None:
        """Carry the epoch's loss and time totals over from the run that checkpointed."""
        self.stats.update(state.get("stats", {}))
        self.stats["seconds_before"] = self.stats["seconds"]

    def _seconds(self) -> float:
        return self.stats.get("seconds_before", 0.0) + time.monotonic() - self.t0

    # ------------------------------------------------------------------ feature bank
    def _previous_bank(self) -> int:
        previous = self.epoch - 1
        if not is_complete(self.run_dir, previous):
            raise SegmentError(
                f"features of epoch {previous} are not complete; run train "
                f"segment {previous} first (its bank seeds the unvisited rows)"
            )
        return previous

    def _prepare_bank(self, init_from: int | None) -> Path:
        path = embeddings_path(self.run_dir, self.epoch)
        if self.env.is_main:
            prepare_bank(self.run_dir, self.epoch, self.n_tiles, self.cfg.model.proj_dim, init_from)
        barrier()
        return path

    def _extract(self, trainer: Trainer) -> None:
        path = self._prepare_bank(init_from=None)
        started = time.monotonic()
        self.rows_written += extract_pass(trainer, self.run_dir, self.epoch, path, self.flag)
        barrier()
        self.stats["extract_s"] = self.stats.get("extract_s", 0.0) + time.monotonic() - started
        self._save(trainer, "done")

    # ------------------------------------------------------------------ training
    def _train(self, trainer: Trainer) -> bool:
        """Train to the epoch's end or the step budget; True when the epoch is complete."""
        cfg = self.cfg
        total = trainer.steps_per_epoch
        if total == 0:
            raise SegmentError(
                f"each rank draws {trainer.sampler.local_len} samples, fewer than "
                f"one batch; lower train.data.batch_size"
            )
        remaining = total - trainer.step_in_epoch
        limit = min(remaining, cfg.max_steps) if cfg.max_steps else remaining
        writer = None
        if cfg.feature_source == "train":
            writer = BankWriter(embeddings_path(self.run_dir, self.epoch), self.n_tiles, cfg.model.proj_dim)
        window = LossWindow()
        self._tick = time.monotonic()
        self.scalars = ScalarWriter(self.run_dir, enabled=self.env.is_main)  # RUN/tb/, rank 0
        try:
            for batch in trainer.batches(limit):
                self._step(trainer, batch, writer, window, total)
        finally:
            self.scalars.close()
            if writer is not None:
                writer.close()
        complete = trainer.step_in_epoch >= total
        if not complete:
            self._save(trainer, "train")
            log.info(
                "step budget of %d reached at step %d/%d: checkpointed; run segment %d again to continue",
                cfg.max_steps,
                trainer.step_in_epoch,
                total,
                self.epoch,
            )
        return complete

    def _step(
        self, trainer: Trainer, batch: dict, writer: BankWriter | None, window: LossWindow, total: int
    ) -> None:
        cfg, env = self.cfg, self.env
        out = trainer.train_step(batch)
        if writer is not None and bool(out.owner.any()):
            z = out.embeddings[out.owner.to(out.embeddings.device)]
            writer.write_rows(out.index[out.owner].numpy(), z.to(torch.float16).cpu().numpy())
            self.rows_written += int(out.owner.sum())
        if self.on_step is not None:
            self.on_step(trainer.global_step)
        # one collective per step: the mean loss and whether any rank was told to stop
        agreed = all_reduce_sum(
            torch.stack([out.loss.float(), torch.tensor(float(self.flag.is_set()), device=out.loss.device)])
        ).cpu()
        loss = float(agreed[0]) / env.world_size
        if not math.isfinite(loss):
            last = self.ckpt.steps()
            raise NonFiniteLoss(
                f"epoch {self.epoch} step {trainer.step_in_epoch}: loss is {loss}; stopped "
                f"without saving, the newest checkpoint "
                f"({self.ckpt.path_for(last[-1]) if last else 'none'}, checksum and weights "
                f"verified when it loaded) is kept — lower train.optim.lr or check the tiles"
            )
        now = time.monotonic()  # wall time per step, waiting for data included
        seconds, self._tick = now - self._tick, now
        images = len(out.index) * env.world_size
        self.stats["loss_sum"] += loss
        self.stats["steps"] += 1
        self.stats["images"] += images
        self.stats["train_seconds"] += seconds
        window.add(loss, images, seconds)
        step = trainer.global_step
        lr = trainer.optimizer.param_groups[0]["lr"]
        for name, value in (("loss", loss), ("lr", lr), ("images_per_s", images / max(seconds, 1e-9))):
            self.scalars.add(f"step/{name}", value, step)
        if trainer.step_in_epoch % cfg.log_every == 0 or trainer.step_in_epoch == total:
            self._report(trainer, window, total)
        if float(agreed[1]) > 0:
            if writer is not None:
                writer.sync()
            self._save(trainer, "train")
            log.warning(
                "preempted at epoch %d step %d (global %d): checkpointed",
                self.epoch,
                trainer.step_in_epoch,
                step,
            )
            raise Preempted(f"segment {self.epoch} preempted at global step {step}")
        if step % cfg.checkpoint_every == 0 and trainer.step_in_epoch < total:
            if writer is not None:
                writer.sync()
            self._save(trainer, "train")

    def _report(self, trainer: Trainer, window: LossWindow, total: int) -> None:
        if not self.env.is_main or not window.steps:
            return
        lr = trainer.optimizer.param_groups[0]["lr"]
        rate = window.images / max(window.seconds, 1e-9)
        eta = (total - trainer.step_in_epoch) * window.seconds / window.steps
        log.info(
            "epoch %d step %d/%d (global %d) loss %.4f lr %.4g %.1f img/s ETA %.0f s",
            self.epoch,
            trainer.step_in_epoch,
            total,
            trainer.global_step,
            window.mean,
            lr,
            rate,
            eta,
        )
        append_jsonl(
            RunPaths(self.run_dir).metrics,
            {
                "kind": "train_window",
                "epoch": self.epoch,
                "step": trainer.global_step,
                "loss": window.mean,
                "lr": lr,
                "images_per_s": rate,
            },
        )
        window.reset()

    # ------------------------------------------------------------------ the end
    def _stale_fraction(self, trainer: Trainer) -> float:
        if self.epoch == 0 or self.cfg.feature_source == "extract":
            return 0.0
        # a collective (every rank summarises at the same step): the ranks' owned rows are disjoint
        owned = torch.tensor([trainer.sampler.owned(trainer.position)], dtype=torch.int64, device=self.device)
        return 1.0 - int(all_reduce_sum(owned).item()) / self.n_tiles

    def _summary(self, trainer: Trainer, complete: bool) -> dict:
        s = self.stats
        return {
            "epoch": self.epoch,
            "complete": complete,
            "loss": s["loss_sum"] / s["steps"] if s["steps"] else None,
            "steps": trainer.step_in_epoch,
            "global_step": trainer.global_step,
            "seconds": round(self._seconds(), 3),
            "images_per_s": s["images"] / s["train_seconds"] if s["train_seconds"] else None,
            "stale_fraction": self._stale_fraction(trainer),
            "feature_source": "extract" if self.epoch == 0 else self.cfg.feature_source,
            "k": trainer.model.k if self.epoch else None,
            "world_size": self.env.world_size,
            "relabel_s": s.get("relabel_s"),
            "extract_s": round(s.get("extract_s", 0.0), 3),
        }

    def _finish(self, trainer: Trainer) -> dict:
        summary = self._summary(trainer, complete=True)
        # the ranks' rows are disjoint iff their counts add up to the distinct rows written; this
        # collective is also the barrier after which every rank's rows are on disk
        rows = all_reduce_sum(torch.tensor([float(self.rows_written)], device=self.device))
        summary["bank_rows_written_this_job"] = int(rows.item())
        if summary["feature_source"] == "train":  # unvisited rows keep their last embedding
            fill_unvisited(self.run_dir, self.epoch, self.epoch - 1, self.env.rank, self.env.world_size)
            barrier()
        if self.env.is_main:
            finalize_bank(
                self.run_dir,
                self.epoch,
                self.n_tiles,
                self.cfg.model.proj_dim,
                summary["feature_source"],
                summary["stale_fraction"],
            )
            append_jsonl(
                RunPaths(self.run_dir).metrics,
                {
                    "kind": "train_epoch",
                    **{
                        k: summary[k]
                        for k in (
                            "epoch",
                            "loss",
                            "steps",
                            "seconds",
                            "images_per_s",
                            "stale_fraction",
                            "relabel_s",
                            "extract_s",
                        )
                    },
                },
            )
            write_done(self.run_dir, self.epoch, summary)
            log.info("train segment %d done: %s", self.epoch, summary)
        barrier()
        return summary
