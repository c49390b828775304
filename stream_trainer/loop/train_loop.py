"""The training loop: iterator-driven, no epochs, one vote and (usually) one step per round.

Each round: take this worker's batch (fresh rows + replay), vote (``ballot.py``), and then all
act on the same totals: stop, skip (nobody has data), or step (idle workers with zero-weight
rows). The accountant moves positions for the fresh rows trained (``accountant.py``); on the one
schedule (``schedule.py``) the chief evaluates (``scorer.py``), every worker checkpoints and the
chief commits (``state/checkpointer.py``), and the chief exports the checkpointed weights with
their score (``serve/export.py``). The parts own the rules; this file tells the story.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from stream_trainer import metrics
from stream_trainer.config import CheckpointConfig, LoopConfig
from stream_trainer.errors import CheckpointError, InputPipelineError, StreamTrainerError
from stream_trainer.learn.batcher import Batch, Batcher
from stream_trainer.learn.workers import Workers
from stream_trainer.loop.accountant import Accountant
from stream_trainer.loop.ballot import Ballot, Decision
from stream_trainer.loop.schedule import CHECKPOINT_RETRY_S, Schedule
from stream_trainer.loop.scorer import Scorer
from stream_trainer.loop.status import Status
from stream_trainer.loop.tensorboard import Board
from stream_trainer.quality.evaluate import EvalResult
from stream_trainer.serve.export import Publisher
from stream_trainer.state.checkpointer import Checkpointer
from stream_trainer.threads import Threads

log = logging.getLogger(__name__)


class InputState(Protocol):
    """What the loop asks of the input side (the Kafka source and the feeder)."""

    def failure(self) -> StreamTrainerError | BaseException | None: ...

    def exhausted(self) -> bool: ...

    def partitions(self) -> int: ...


@dataclass
class RunSummary:
    start_step: int = 0
    step: int = 0
    images: int = 0  # fresh images trained by this worker
    replayed: int = 0
    loss: float = float("nan")
    checkpoints: int = 0
    checkpoint_failures: int = 0
    # The baseline, the best and the last evaluation: never a list that grows with the job.
    first_eval: EvalResult | None = None
    best_eval: EvalResult | None = None
    last_eval: EvalResult | None = None
    positions: dict[int, int] = field(default_factory=dict)
    stopped_by: str = ""
    final_checkpoint_ok: bool = True

    @property
    def evals(self) -> list[EvalResult]:
        """The distinct kept evaluations (first, best, last), in step order."""
        kept = {id(e): e for e in (self.first_eval, self.best_eval, self.last_eval) if e is not None}
        return sorted(kept.values(), key=lambda e: e.step)

    def __str__(self) -> str:
        iou = f"{self.last_eval.mean_iou:.3f}" if self.last_eval else "n/a"
        return (f"steps {self.start_step}->{self.step}, fresh images {self.images}, replayed {self.replayed}, "
                f"checkpoints {self.checkpoints}, eval mIoU {iou}, stopped by {self.stopped_by}")


@dataclass
class LoopParts:
    """Everything the loop talks to; built by ``app.py``."""

    workers: Workers
    batcher: Batcher
    accountant: Accountant
    checkpointer: Checkpointer
    scorer: Scorer | None  # the chief's; None: no evaluation
    publisher: Publisher | None  # the chief's; None: no exports
    inputs: InputState
    stop: threading.Event
    threads: Threads
    board: Board | None = None  # the chief's TensorBoard event files; None: another worker, or off


class TrainLoop:
    """Owns the step counter and the round; everything it talks to is passed in."""

    def __init__(self, cfg: LoopConfig, checkpoint: CheckpointConfig, parts: LoopParts, max_wait_ms: int,
                 start_step: int = 0) -> None:
        self.cfg = cfg
        self.p = parts
        self.w = parts.workers
        self.summary = RunSummary(start_step=start_step, step=start_step)
        self.schedule = Schedule(cfg, checkpoint, start_step)
        self.ballot = Ballot(self.w, max_wait_ms / 1000.0, self.schedule.checkpoint_due_by_clock,
                             parts.inputs.partitions)
        self.status = Status(cfg.log_every_s, start_step, time.monotonic)

    def run(self) -> RunSummary:
        s, started, waited = self.summary, time.monotonic(), 0.0
        metrics.WORKERS.set(self.w.count)
        metrics.GLOBAL_STEP.set(s.step)
        if self.cfg.eval_every_steps:  # the untrained (or restored) model's score: the baseline to beat
            self.w.chief_only("evaluating", self._evaluate)
        self.status.restart(s.step)
        while True:
            reason = self._stop_reason(started)
            t0 = time.monotonic()
            batch = None if reason else self.p.batcher.next(self.ballot.wait_s())
            took = time.monotonic() - t0
            waited += took
            self.status.window.waited += took
            decision = self.ballot.cast(batch, reason)
            if decision.stop:
                s.stopped_by = reason or "another worker"
                break
            if decision.rows == 0:
                if self.w.count > 1:
                    metrics.SKIPPED_STEPS.inc()
            else:
                metrics.INPUT_WAIT_SECONDS.observe(waited)
                waited = 0.0
                self._step(batch, decision)
            self._housekeeping(decision)
        # Whatever the reason, a stop is now under way: the readers end, and the shutdown limit
        # (cli.py) counts from here, so a final save that hangs cannot keep the process.
        self.p.stop.set()
        self._finish()
        return self._outcome()

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

    def _step(self, batch: Batch | None, decision: Decision) -> None:
        s = self.summary
        if batch is None:  # others have rows: join their step with zero-weight rows
            batch = self.p.batcher.placeholder()
            metrics.IDLE_STEPS.inc()
        t0 = time.monotonic()
        out = self.w.step(batch.image, batch.mask, batch.weight, batch.fresh, float(decision.rows))
        metrics.STEP_SECONDS.observe(time.monotonic() - t0)
        s.step += 1
        metrics.STEPS.inc()
        metrics.GLOBAL_STEP.set(s.step)
        if batch.n_rows:
            s.loss = float(out["loss"]) * decision.rows / batch.n_rows  # this worker's mean, for the log
            metrics.LOSS.set(s.loss)
        fresh, replayed = self.p.accountant.trained(batch, s.step)
        s.images += fresh
        s.replayed += replayed
        self.status.window.add(out, fresh, replayed)

    def _housekeeping(self, decision: Decision) -> None:
        step = self.summary.step
        if self.schedule.eval_due(step):
            self.schedule.evaluated(step)  # on every worker: the schedule decides a collective round
            self.w.chief_only("evaluating", self._evaluate)
        if self.schedule.checkpoint_due(step, decision.checkpoint_by_clock):
            self._checkpoint()
        reading = self.status.reading(step, self.summary.loss, self.p.checkpointer.lag(),
                                      self.p.accountant.dead_lettered)
        if reading is not None:
            log.info("%s", reading.line())
            if self.p.board is not None:
                self.p.board.reading(reading)

    def _checkpoint(self, final: bool = False) -> bool:
        """Every worker calls this at the same round; the chief's copy is the job's checkpoint."""
        s = self.summary
        try:
            saved = self.p.checkpointer.save(s.step, self.ballot.partitions)
        except CheckpointError as exc:
            s.checkpoint_failures += 1
            metrics.CHECKPOINT_FAILURES.inc()
            # Offsets are not committed: the group must never get ahead of what is saved.
            log.error("%s; keeping the previous checkpoint, retrying in %.0f s", exc, CHECKPOINT_RETRY_S)
            self.schedule.checkpointed(s.step, ok=False)
            return False
        self.schedule.checkpointed(s.step, ok=True)
        s.checkpoints += 1
        s.positions = saved.positions
        metrics.CHECKPOINTS.inc()
        metrics.LAST_CHECKPOINT.set(time.time())
        if self.w.is_chief:
            log.info("checkpoint %s (step %d, next offsets %s)", saved.path, s.step, saved.positions)
            if self.p.board is not None:
                self.p.board.flush()
        # Every worker joins the round (the chief's clock decides whether an export is due): an
        # export with its evaluation can take longer than the peer timeout, and the others would
        # otherwise wait for the chief inside their next vote and take it for lost.
        self.w.chief_only("exporting", partial(self._export, saved.positions, final))
        return True

    def _export(self, positions: dict[int, int], final: bool) -> None:
        """The export gate: the weights go out with their own score, or (no eval data) without one."""
        if self.p.publisher is None or not self.schedule.export_due(final):
            return
        scored = self._evaluate() if self.p.scorer is not None else None
        if scored is None and self.p.scorer is not None and self.p.scorer.has_data is not False:
            log.warning("export of step %d postponed: the eval topic may hold data but could not be read, and an "
                        "export must carry the score of its weights", self.summary.step)
            return
        self.schedule.exported()
        self.p.publisher.publish(self.summary.step, positions, scored)

    def _evaluate(self) -> EvalResult | None:
        """The chief's score of the current weights (made now unless made at this step already)."""
        if self.p.scorer is None:
            return None
        s = self.summary
        # No schedule change here: the chief also evaluates for an export, and every worker's
        # schedule must stay the same (it decides collective rounds).
        result = self.p.scorer.score(s.step)
        s.first_eval, s.best_eval, s.last_eval = self.p.scorer.first, self.p.scorer.best, self.p.scorer.last
        if result is not None and self.p.board is not None:
            self.p.board.evaluation(result)
        return result

    def _finish(self) -> None:
        self.p.accountant.settle()
        # Saved unless nothing changed anywhere since the last save: one more vote, so that every
        # worker makes the same collective calls.
        s = self.summary
        mine = self.p.checkpointer.moved_since_save() or self.schedule.unsaved(s.step) or not s.checkpoints
        if self.ballot.anything_to_save(mine):
            s.final_checkpoint_ok = self._checkpoint(final=True)
        log.info("model weights checksum %s (identical on every worker of a job)", self.p.checkpointer.checksum())
        if self.p.board is not None:
            self.p.board.flush()
        self.p.accountant.close()

    def _outcome(self) -> RunSummary:
        """The summary, or the failure that stopped the loop (a dead thread, the inputs)."""
        died = self.p.threads.failure()
        if died is not None:
            raise died
        failure = self.p.inputs.failure()
        if failure is not None:
            if isinstance(failure, StreamTrainerError):
                raise failure
            msg = (f"the input pipeline failed: {failure!r} "
                   f"(progress up to step {self.summary.step} is checkpointed)")
            raise InputPipelineError(msg) from failure
        return self.summary
