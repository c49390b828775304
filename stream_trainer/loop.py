"""The training loop: iterator-driven, no epochs, one step per batch until told to stop.

Each step: wait for a batch (bounded wait, so a stop request is seen promptly), train,
account for the batch's offsets, and on schedule evaluate, checkpoint (+ commit) and log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import IO, Any

import keras
import numpy as np
import tensorflow as tf

from stream_trainer import metrics
from stream_trainer.checkpoint import CheckpointStore
from stream_trainer.committer import Committer
from stream_trainer.config import LoopConfig
from stream_trainer.deadletter import DeadLetterWorker
from stream_trainer.errors import CheckpointError, InputPipelineError
from stream_trainer.evaluate import EvalResult, Evaluator
from stream_trainer.feeder import Feeder
from stream_trainer.progress import OffsetTracker

log = logging.getLogger(__name__)


def make_train_step(model: keras.Model, optimizer: keras.optimizers.Optimizer) -> Callable[..., tf.Tensor]:
    """A compiled step: forward, sparse cross-entropy on logits, backward, Adam update."""
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function(reduce_retracing=True)
    def train_step(images: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_fn(masks, model(images, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return train_step


@dataclass
class RunSummary:
    start_step: int = 0
    step: int = 0
    images: int = 0
    loss: float = float("nan")
    checkpoints: int = 0
    checkpoint_failures: int = 0
    evals: list[EvalResult] = field(default_factory=list)
    positions: dict[int, int] = field(default_factory=dict)
    stopped_by: str = ""

    def __str__(self) -> str:
        ev = self.evals[-1] if self.evals else None
        iou = f"{ev.mean_iou:.3f}" if ev else "n/a"
        return (f"steps {self.start_step}->{self.step}, images {self.images}, checkpoints {self.checkpoints}, "
                f"eval mIoU {iou}, stopped by {self.stopped_by}")


class TrainLoop:
    """Owns the step counter and the schedule; everything it talks to is passed in."""

    def __init__(self, cfg: LoopConfig, topic: str, model: keras.Model, optimizer: keras.optimizers.Optimizer,
                 feeder: Feeder, tracker: OffsetTracker, store: CheckpointStore, committer: Committer,
                 dead_letters: DeadLetterWorker, evaluator: Callable[[], Evaluator | None],
                 stop: threading.Event, start_step: int = 0) -> None:
        self.cfg = cfg
        self.topic = topic
        self.model = model
        self.feeder = feeder
        self.tracker = tracker
        self.store = store
        self.committer = committer
        self.dead_letters = dead_letters
        self._evaluator_factory = evaluator
        self._evaluator: Evaluator | None = None
        self.stop = stop
        self.train_step = make_train_step(model, optimizer)
        self.summary = RunSummary(start_step=start_step, step=start_step)
        self._trained_log: IO[str] | None = open(cfg.trained_log, "a") if cfg.trained_log else None  # noqa: SIM115
        self._retry_checkpoint_at = 0.0

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> RunSummary:
        s = self.summary
        started = time.monotonic()
        self._evaluate()  # the untrained (or restored) model's score: the baseline to beat
        window = _Window(s.step, time.monotonic())
        waited = 0.0
        while True:
            reason = self._should_stop(started)
            if reason:
                s.stopped_by = reason
                break
            t0 = time.monotonic()
            batch = self.feeder.get(timeout_s=0.25)
            dt = time.monotonic() - t0
            waited += dt  # the whole wait before this batch (histogram)
            window.waited += dt  # only this status line's share: an outage spans many lines
            if batch is None:
                if self.feeder.exhausted.is_set():
                    s.stopped_by = "end of input"
                    break
                if self.feeder.failure is not None:
                    s.stopped_by = "input failure"
                    break
                self._housekeeping(window)
                continue
            metrics.INPUT_WAIT_SECONDS.observe(waited)
            waited = 0.0
            self._step(batch)
            window.images += int(batch["image"].shape[0])
            if self.cfg.eval_every_steps and s.step % self.cfg.eval_every_steps == 0:
                self._evaluate()
            self._housekeeping(window)
        self._finish()
        if self.feeder.failure is not None:
            msg = f"the input pipeline failed: {self.feeder.failure!r} (progress up to step {s.step} is checkpointed)"
            raise InputPipelineError(msg) from self.feeder.failure
        return s

    def _should_stop(self, started: float) -> str:
        if self.stop.is_set():
            return "signal"
        if self.cfg.max_steps and self.summary.step - self.summary.start_step >= self.cfg.max_steps:
            return "max_steps"
        if self.cfg.max_seconds and time.monotonic() - started >= self.cfg.max_seconds:
            return "max_seconds"
        return ""

    def _step(self, batch: dict[str, Any]) -> None:
        t0 = time.monotonic()
        loss = float(self.train_step(batch["image"], batch["mask"]))
        metrics.STEP_SECONDS.observe(time.monotonic() - t0)
        s = self.summary
        s.step += 1
        n = int(batch["image"].shape[0])
        s.images += n
        metrics.STEPS.inc()
        metrics.GLOBAL_STEP.set(s.step)
        metrics.IMAGES_TRAINED.inc(n)
        metrics.MESSAGES_CONSUMED.labels(self.topic).inc(n)
        metrics.BYTES_CONSUMED.labels(self.topic).inc(int(np.sum(batch["nbytes"])))
        metrics.LOSS.set(loss)
        s.loss = loss
        self._account(batch)

    def _account(self, batch: dict[str, Any]) -> None:
        """Mark the batch's messages trained; send holes before them to the dead-letter worker."""
        parts = batch["partition"].numpy()
        prevs = batch["prev"].numpy()
        offsets = batch["offset"].numpy()
        for p, prev, off in zip(parts.tolist(), prevs.tolist(), offsets.tolist(), strict=True):
            if off == prev + 1:
                self.tracker.handled(p, prev, off)
            else:
                self.dead_letters.submit(p, prev + 1, off, partial(self.tracker.handled, p, prev, off))
        now_ms = time.time() * 1000.0
        for ts in batch["produce_ts_ms"].numpy().tolist():
            if ts > 0:
                metrics.LATENCY_SECONDS.observe(max(0.0, (now_ms - ts) / 1000.0))
        if self._trained_log is not None:
            step = self.summary.step
            self._trained_log.write("".join(f"{p} {o} {step}\n" for p, o in zip(parts.tolist(), offsets.tolist(),
                                                                                  strict=True)))
            self._trained_log.flush()

    # -- schedule ---------------------------------------------------------------------------
    def _housekeeping(self, window: _Window) -> None:
        if self.store.expired(self.summary.step) and time.monotonic() >= self._retry_checkpoint_at:
            self._checkpoint()
        now = time.monotonic()
        if now - window.t0 >= self.cfg.log_every_s:
            self._log_status(window, now)
            window.reset(self.summary.step, now)

    def _checkpoint(self) -> bool:
        s = self.summary
        positions = self.tracker.positions()
        try:
            path = self.store.save(s.step, positions)
        except CheckpointError as exc:
            s.checkpoint_failures += 1
            metrics.CHECKPOINT_FAILURES.inc()
            # Offsets are not committed: the group must never get ahead of what is saved.
            log.error("%s; keeping the previous checkpoint, retrying in 5 s", exc)
            self._retry_checkpoint_at = time.monotonic() + 5.0
            return False
        s.checkpoints += 1
        s.positions = positions
        metrics.CHECKPOINTS.inc()
        metrics.LAST_CHECKPOINT.set(time.time())
        self.committer.commit(positions)
        log.info("checkpoint %s (step %d, next offsets %s)", path, s.step, positions)
        try:
            self.store.export(s.step, positions)
        except CheckpointError as exc:
            log.error("%s", exc)
        return True

    def _evaluate(self) -> None:
        if self._evaluator is None:
            self._evaluator = self._evaluator_factory()
            if self._evaluator is None:
                return
        result = self._evaluator.evaluate(self.summary.step)
        self.summary.evals.append(result)
        metrics.EVAL_MEAN_IOU.set(result.mean_iou)
        metrics.EVAL_PIXEL_ACCURACY.set(result.pixel_accuracy)
        log.info("eval step %d: mean IoU %.3f, pixel accuracy %.3f on %d images%s", result.step, result.mean_iou,
                 result.pixel_accuracy, result.images, f" (snapshot {result.snapshot})" if result.snapshot else "")

    def _log_status(self, w: _Window, now: float) -> None:
        dt = max(now - w.t0, 1e-9)
        lag = sum(self.committer.lag.values()) if self.committer.lag else "?"
        log.info("step %d | %.2f steps/s | %.1f img/s | loss %.4f | lag %s | input wait %.0f%% | dead-lettered %d",
                 self.summary.step, (self.summary.step - w.step) / dt, w.images / dt, self.summary.loss,
                 lag, 100.0 * w.waited / dt, self.dead_letters.sent)

    def _finish(self) -> None:
        # Let pending dead-letter holes land so the final positions move past them.
        deadline = time.monotonic() + 5.0
        while not self.dead_letters.idle() and time.monotonic() < deadline:
            time.sleep(0.05)
        s = self.summary
        if s.step > self.store.last_saved_step or self.tracker.positions() != s.positions:
            self._checkpoint()
        if self._trained_log is not None:
            self._trained_log.close()


@dataclass
class _Window:
    """Counters for one status-line interval."""

    step: int
    t0: float
    images: int = 0
    waited: float = 0.0

    def reset(self, step: int, t0: float) -> None:
        self.step, self.t0, self.images, self.waited = step, t0, 0, 0.0
