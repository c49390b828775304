"""When to checkpoint, evaluate and export: one schedule, one clock.

Steps are identical on every worker, so what is scheduled by step count needs no agreement.
Wall-clock time is not: each worker's clock and round timing differ, so the one clock that
counts is the chief's. Its verdict "a checkpoint is due by time" travels in the vote
(``ballot.py``), and every worker checkpoints at the round that carries it. Evaluation and
export are the chief's alone (no collective), so the chief's clock decides them directly.

Exports are throttled (``checkpoint.export_every_s``): one takes seconds (two traced signatures
plus ``model.keras``). The first checkpoint of a run and the final one are always offered.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from stream_trainer.config import CheckpointConfig, LoopConfig

# After a failed save the next attempt comes this soon, whatever the interval: until then
# nothing new is committed, and the lag grows.
CHECKPOINT_RETRY_S = 5.0


class Schedule:
    """The checkpoint, evaluation and export schedule of one worker (the chief's clock decides)."""

    def __init__(self, loop: LoopConfig, checkpoint: CheckpointConfig, start_step: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.loop = loop
        self.checkpoint = checkpoint
        self._clock = clock
        self._checkpoint_step = start_step  # the step of the last checkpoint attempt
        self._checkpoint_time = clock()  # when the last checkpoint was written
        self._retry_at: float | None = None  # set after a failed save
        self._eval_step = start_step
        self._export_time: float | None = None

    # -- checkpoints ---------------------------------------------------------------------------
    def checkpoint_due_by_clock(self) -> bool:
        """The chief's vote: the time interval passed, or a failed save is due for its retry."""
        now = self._clock()
        if self._retry_at is not None:
            return now >= self._retry_at
        every = self.checkpoint.every_seconds
        return every > 0 and now - self._checkpoint_time >= every

    def checkpoint_due(self, step: int, voted_by_clock: bool) -> bool:
        """Same answer on every worker: the vote carried the chief's clock, steps are shared."""
        if step <= self._checkpoint_step:
            return False
        every = self.checkpoint.every_steps
        return voted_by_clock or (every > 0 and step - self._checkpoint_step >= every)

    def checkpointed(self, step: int, ok: bool) -> None:
        """Record an attempt at ``step``; a failure schedules the retry."""
        self._checkpoint_step = step
        if ok:
            self._retry_at = None
            self._checkpoint_time = self._clock()
        else:
            self._retry_at = self._clock() + CHECKPOINT_RETRY_S

    def unsaved(self, step: int) -> bool:
        """True when ``step`` is not in a checkpoint yet, or the last attempt failed."""
        return step != self._checkpoint_step or self._retry_at is not None

    # -- evaluation: a round every worker joins (the chief evaluates, the others keep it alive) ----
    def eval_due(self, step: int) -> bool:
        every = self.loop.eval_every_steps
        return every > 0 and step - self._eval_step >= every

    def evaluated(self, step: int) -> None:
        """The scheduled evaluation round at ``step``, on every worker: the interval restarts. An
        export's own evaluation (the chief's alone) does not move it, so every worker's schedule agrees."""
        self._eval_step = step

    # -- exports (the chief's) -----------------------------------------------------------------
    def export_due(self, final: bool) -> bool:
        """After a checkpoint: the first of the run, the final one, or ``export_every_s`` since the last."""
        if final or self._export_time is None:
            return True
        return self._clock() - self._export_time >= self.checkpoint.export_every_s

    def exported(self) -> None:
        """An export was offered (written or declined by the policy): the interval restarts."""
        self._export_time = self._clock()
