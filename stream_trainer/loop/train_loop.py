"""The training loop: iterator-driven, no epochs, one vote and (usually) one step per round.

Each round: assemble this worker's batch (fresh rows + replay), vote with the other workers (a
no-op alone), and then all act on the same totals — stop, skip (nobody has data), or step
(idle workers with zero-weight rows); then account for the fresh rows' offsets, and on the
chief's schedule evaluate, checkpoint (+ commit) and export. See ``workers.py`` for why every
collective decision goes through the vote.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, Any, Protocol

import numpy as np
import numpy.typing as npt

from stream_trainer import metrics
from stream_trainer.config import LoopConfig
from stream_trainer.errors import CheckpointError, InputPipelineError, StreamTrainerError
from stream_trainer.learn.batcher import Batch, Batcher
from stream_trainer.learn.replay import merge_states
from stream_trainer.learn.workers import CHECKPOINT, FRESH, PARTITIONS, ROWS, STOP, VOTE_SIZE, Workers
from stream_trainer.quality.deadletter import DeadLetterWorker
from stream_trainer.quality.evaluate import EvalResult, Evaluator, scores
from stream_trainer.state.checkpoint import CheckpointStore
from stream_trainer.state.committer import Committer
from stream_trainer.state.progress import OffsetTracker
from stream_trainer.threads import Threads

log = logging.getLogger(__name__)
Array = npt.NDArray[Any]

# How long one round waits for a first fresh row when alone: bounds how late a stop is noticed.
_IDLE_WAIT_S = 0.25
_CHECKPOINT_RETRY_S = 5.0


class ReplayStore(Protocol):
    def __len__(self) -> int: ...

    def add(self, images: Array, masks: Array, partitions: Array, offsets: Array) -> None: ...

    def state(self) -> Any: ...


class InputState(Protocol):
    """What the loop asks of the input side (the Kafka source and the feeder)."""

    def failure(self) -> StreamTrainerError | BaseException | None: ...

    def exhausted(self) -> bool: ...

    def partitions(self) -> int: ...


class Exporter(Protocol):
    def __call__(self, step: int, positions: dict[int, int], evaluation: EvalResult | None,
                 final: bool = False) -> None: ...


@dataclass
class RunSummary:
    start_step: int = 0
    step: int = 0
    images: int = 0  # fresh images trained by this worker
    replayed: int = 0
    loss: float = float("nan")
    checkpoints: int = 0
    checkpoint_failures: int = 0
    evals: list[EvalResult] = field(default_factory=list)
    positions: dict[int, int] = field(default_factory=dict)
    stopped_by: str = ""
    final_checkpoint_ok: bool = True

    def __str__(self) -> str:
        ev = self.evals[-1] if self.evals else None
        iou = f"{ev.mean_iou:.3f}" if ev else "n/a"
        return (f"steps {self.start_step}->{self.step}, fresh images {self.images}, replayed {self.replayed}, "
                f"checkpoints {self.checkpoints}, eval mIoU {iou}, stopped by {self.stopped_by}")


@dataclass
class _Window:
    """Counters for one status-line interval."""

    step: int
    t0: float
    images: int = 0
    replayed: int = 0
    waited: float = 0.0
    fresh_loss: float = 0.0
    fresh_rows: int = 0
    replay_loss: float = 0.0
    replay_rows: int = 0
    fresh_cm: Array = field(default_factory=lambda: np.zeros((3, 3), np.int64))
    replay_cm: Array = field(default_factory=lambda: np.zeros((3, 3), np.int64))

    def add(self, out: dict[str, Array]) -> None:
        self.fresh_loss += float(out["fresh_loss_sum"])
        self.fresh_rows += int(out["fresh_rows"])
        self.replay_loss += float(out["replay_loss_sum"])
        self.replay_rows += int(out["replay_rows"])
        self.fresh_cm += out["fresh_confusion"]
        self.replay_cm += out["replay_confusion"]


@dataclass
class LoopParts:
    """Everything the loop talks to; built by ``app.py``."""

    workers: Workers
    batcher: Batcher
    replay: ReplayStore | None
    tracker: OffsetTracker
    store: CheckpointStore
    committer: Committer | None  # the chief's
    dead_letters: DeadLetterWorker
    evaluator: Callable[[], Evaluator | None]
    export: Exporter | None
    inputs: InputState
    stop: threading.Event
    threads: Threads


class TrainLoop:
    """Owns the step counter and the schedule; everything it talks to is passed in."""

    def __init__(self, cfg: LoopConfig, topic: str, parts: LoopParts, max_wait_ms: int, start_step: int = 0) -> None:
        self.cfg = cfg
        self.topic = topic
        self.p = parts
        self.w = parts.workers
        self.max_wait_s = max_wait_ms / 1000.0
        self.summary = RunSummary(start_step=start_step, step=start_step)
        self._evaluator: Evaluator | None = None
        self._trained_log: IO[str] | None = None
        if cfg.trained_log:
            Path(cfg.trained_log).parent.mkdir(parents=True, exist_ok=True)
            self._trained_log = open(cfg.trained_log, "a")  # noqa: SIM115 - closed in _finish
        self._retry_checkpoint_at: float | None = None  # the chief's, after a failed save
        # Identical on every worker (steps are): when the last checkpoint was attempted, and the
        # last evaluation made. Schedules by step count need no vote; only the chief's clock does.
        self._last_checkpoint_step = start_step
        self._last_checkpoint_time = time.monotonic()
        self._last_eval_step = start_step
        self._saved_own: dict[int, int] = {}  # this worker's positions at the last checkpoint
        self._partitions = 1  # the topic's partition count, as the chief last voted it
        self._window = _Window(start_step, time.monotonic())

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> RunSummary:
        s = self.summary
        started = time.monotonic()
        metrics.WORKERS.set(self.w.count)
        metrics.GLOBAL_STEP.set(s.step)
        if self.cfg.eval_every_steps:  # the untrained (or restored) model's score: the baseline to beat
            self.w.chief_only("evaluating", self._evaluate)
        self._window = _Window(s.step, time.monotonic())
        others_had_rows = False
        waited = 0.0
        while True:
            reason = self._stop_reason(started)
            t0 = time.monotonic()
            batch = None
            if not reason:
                wait = (0.0 if others_had_rows else self.max_wait_s) if self.w.count > 1 else _IDLE_WAIT_S
                batch = self.p.batcher.next(wait)
            waited += time.monotonic() - t0
            self._window.waited += time.monotonic() - t0
            totals = self.w.vote(self._ballot(batch, reason))
            self._partitions = max(1, int(totals[PARTITIONS]))
            if totals[STOP] > 0:
                s.stopped_by = reason or "another worker"
                break
            others_had_rows = totals[ROWS] > 0
            if totals[ROWS] == 0:
                if self.w.count > 1:
                    metrics.SKIPPED_STEPS.inc()
                self._housekeeping(totals)
                continue
            metrics.INPUT_WAIT_SECONDS.observe(waited)
            waited = 0.0
            self._step(batch, float(totals[ROWS]))
            self._housekeeping(totals)
        self._finish()
        died = self.p.threads.failure()
        if died is not None:
            raise died
        failure = self.p.inputs.failure()
        if failure is not None:
            if isinstance(failure, StreamTrainerError):
                raise failure
            msg = f"the input pipeline failed: {failure!r} (progress up to step {s.step} is checkpointed)"
            raise InputPipelineError(msg) from failure
        return s

    def _stop_reason(self, started: float) -> str:
        s = self.summary
        if self.p.stop.is_set():
            return "signal"
        if self.cfg.max_steps and s.step - s.start_step >= self.cfg.max_steps:
            return "max_steps"
        if self.cfg.max_seconds and time.monotonic() - started >= self.cfg.max_seconds:
            return "max_seconds"
        if self.p.inputs.failure() is not None:
            return "input failure"
        if self.p.threads.failure() is not None:
            return "thread died"
        if self.p.inputs.exhausted() and len(self.p.batcher.fresh) == 0:
            return "end of input"
        return ""

    def _ballot(self, batch: Batch | None, reason: str) -> Array:
        ballot = np.zeros(VOTE_SIZE, np.int64)
        ballot[STOP] = 1 if reason else 0
        if batch is not None:
            ballot[ROWS] = batch.n_rows
            ballot[FRESH] = batch.n_fresh
        if self.w.is_chief:
            ballot[CHECKPOINT] = int(self._checkpoint_due_by_clock())
            ballot[PARTITIONS] = self.p.inputs.partitions()
        return ballot

    def _checkpoint_due_by_clock(self) -> bool:
        now = time.monotonic()
        if self._retry_checkpoint_at is not None:
            return now >= self._retry_checkpoint_at
        every = self.p.store.cfg.every_seconds
        return every > 0 and now - self._last_checkpoint_time >= every

    def _step(self, batch: Batch | None, total_weight: float) -> None:
        s = self.summary
        window = self._window
        if batch is None:
            batch = self.p.batcher.placeholder()
            metrics.IDLE_STEPS.inc()
        t0 = time.monotonic()
        out = self.w.step(batch.image, batch.mask, batch.weight, batch.fresh, total_weight)
        metrics.STEP_SECONDS.observe(time.monotonic() - t0)
        s.step += 1
        metrics.STEPS.inc()
        metrics.GLOBAL_STEP.set(s.step)
        window.add(out)
        replayed = batch.n_rows - batch.n_fresh
        s.replayed += replayed
        window.replayed += replayed
        metrics.IMAGES_REPLAYED.inc(replayed)
        if batch.n_rows:
            s.loss = float(out["loss"]) * total_weight / batch.n_rows  # this worker's mean, for the log
            metrics.LOSS.set(s.loss)
        if batch.rows is not None and len(batch.rows):
            self._account(batch)
            window.images += batch.n_fresh

    def _account(self, batch: Batch) -> None:
        """Mark the fresh rows trained, send holes before them to the dead-letter worker, remember them."""
        rows = batch.rows
        assert rows is not None
        n = len(rows)
        s = self.summary
        s.images += n
        metrics.IMAGES_TRAINED.inc(n)
        metrics.MESSAGES_CONSUMED.labels(self.topic).inc(n)
        metrics.BYTES_CONSUMED.labels(self.topic).inc(int(rows.nbytes.sum()))
        tracker, dead = self.p.tracker, self.p.dead_letters
        parts, prevs, offsets = rows.partition.tolist(), rows.prev.tolist(), rows.offset.tolist()
        for p, prev, off, epoch in zip(parts, prevs, offsets, rows.epoch.tolist(), strict=True):
            if off == prev + 1:
                tracker.handled(p, prev, off, epoch)
            else:
                dead.submit(self.topic, p, prev + 1, off, partial(tracker.handled, p, prev, off, epoch),
                            partial(tracker.is_current, p, epoch))
        now_ms = time.time() * 1000.0
        for ts in rows.produce_ts_ms.tolist():
            if ts > 0:
                metrics.LATENCY_SECONDS.observe(max(0.0, (now_ms - ts) / 1000.0))
        if self.p.replay is not None:
            self.p.replay.add(rows.image, rows.mask, rows.partition, rows.offset)
            metrics.REPLAY_MEMBERS.set(len(self.p.replay))
        if self._trained_log is not None:
            self._trained_log.write("".join(f"{p} {o} {s.step}\n" for p, o in zip(parts, offsets, strict=True)))
            self._trained_log.flush()

    # -- schedule ---------------------------------------------------------------------------
    def _housekeeping(self, totals: Array) -> None:
        step = self.summary.step
        every_eval = self.cfg.eval_every_steps
        if every_eval and step - self._last_eval_step >= every_eval:
            self._last_eval_step = step  # on every worker: the schedule decides a collective round
            self.w.chief_only("evaluating", self._evaluate)
        every = self.p.store.cfg.every_steps
        if step > self._last_checkpoint_step and (totals[CHECKPOINT] > 0 or
                                                  (every > 0 and step - self._last_checkpoint_step >= every)):
            self._checkpoint()
        now = time.monotonic()
        if now - self._window.t0 >= self.cfg.log_every_s:
            self._log_status(self._window, now)
            self._window = _Window(self.summary.step, now)

    def _checkpoint(self, final: bool = False) -> bool:
        """Every worker calls this at the same round; the chief's copy is the job's checkpoint."""
        s = self.summary
        self._last_checkpoint_step = s.step
        self._saved_own = self.p.tracker.positions()
        positions = self.w.gather_positions(self._saved_own, self._partitions)
        replay = None
        if self.p.replay is not None:
            states = self.w.gather_json(self.p.replay.state())
            replay = merge_states(states) if len(states) > 1 else states[0]
        try:
            path = self.p.store.save(s.step, positions, replay)
        except CheckpointError as exc:
            s.checkpoint_failures += 1
            metrics.CHECKPOINT_FAILURES.inc()
            # Offsets are not committed: the group must never get ahead of what is saved.
            log.error("%s; keeping the previous checkpoint, retrying in %.0f s", exc, _CHECKPOINT_RETRY_S)
            self._retry_checkpoint_at = time.monotonic() + _CHECKPOINT_RETRY_S
            return False
        self._retry_checkpoint_at = None
        self._last_checkpoint_time = time.monotonic()
        s.checkpoints += 1
        s.positions = positions
        metrics.CHECKPOINTS.inc()
        metrics.LAST_CHECKPOINT.set(time.time())
        if self.w.is_chief:
            if self.p.committer is not None:
                self.p.committer.commit(positions)
            log.info("checkpoint %s (step %d, next offsets %s)", path, s.step, positions)
            if self.p.export is not None:
                last = s.evals[-1] if s.evals else None
                self.p.export(s.step, positions, last, final)
        return True

    def _evaluate(self) -> None:
        self._last_eval_step = self.summary.step
        if self._evaluator is None:
            self._evaluator = self.p.evaluator()
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
        fresh = _part(w.fresh_loss, w.fresh_rows, w.fresh_cm, "fresh")
        replay = _part(w.replay_loss, w.replay_rows, w.replay_cm, "replay")
        lag = "?"
        if self.p.committer is not None and self.p.committer.lag:
            lag = str(sum(self.p.committer.lag.values()))
        log.info("step %d | %.2f steps/s | %.1f fresh img/s | %.1f replayed/s | loss %.4f | fresh %s | replay %s | "
                 "lag %s | input wait %.0f%% | dead-lettered %d", self.summary.step, (self.summary.step - w.step) / dt,
                 w.images / dt, w.replayed / dt, self.summary.loss, fresh, replay, lag, 100.0 * w.waited / dt,
                 self.p.dead_letters.sent)

    def _finish(self) -> None:
        # Let pending dead-letter holes land so the final positions move past them.
        deadline = time.monotonic() + 5.0
        while not self.p.dead_letters.idle() and time.monotonic() < deadline:
            time.sleep(0.05)
        # Saved unless nothing changed anywhere since the last save: one more vote, so that every
        # worker makes the same collective calls.
        ballot = np.zeros(VOTE_SIZE, np.int64)
        ballot[ROWS] = int(self.p.tracker.positions() != self._saved_own or self._retry_checkpoint_at is not None
                           or self.summary.step != self._last_checkpoint_step or not self.summary.checkpoints)
        if self.w.vote(ballot)[ROWS] > 0:
            self.summary.final_checkpoint_ok = self._checkpoint(final=True)
        log.info("model weights checksum %s (identical on every worker of a job)", weights_checksum(self.p.store.model))
        if self._trained_log is not None:
            self._trained_log.close()


def weights_checksum(model: Any) -> str:
    """SHA-256 over the trainable weights: equal on every worker while they train in step."""
    digest = hashlib.sha256()
    for v in model.trainable_variables:
        digest.update(np.ascontiguousarray(np.asarray(v)).tobytes())
    return digest.hexdigest()[:16]


def _part(loss_sum: float, rows: int, cm: Array, name: str) -> str:
    """Set the prequential gauges of one part; return its status-line text."""
    if rows == 0:
        return "-"
    mean_loss = loss_sum / rows
    miou, _ = scores(cm)
    metrics.PREQUENTIAL_LOSS.labels(name).set(mean_loss)
    metrics.PREQUENTIAL_MEAN_IOU.labels(name).set(miou)
    return f"{mean_loss:.3f}/{miou:.2f}"
