"""The per-round vote, and the decisions every worker takes from its totals.

A collective (a step, a checkpoint) blocks until every worker makes it, so workers must agree
on each one without talking otherwise: once per round every worker casts a ballot (alone, the
vote is a no-op) and all act on the same totals (``learn/workers.py`` says why no decision may
rest on local state). A worker that wants to stop, has rows, or (the chief) whose clock says a
checkpoint is due says so in its ballot.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from stream_trainer.learn.batcher import Batch
from stream_trainer.learn.workers import CHECKPOINT, FRESH, PARTITIONS, ROWS, STOP, VOTE_SIZE, Workers

Array = npt.NDArray[Any]

# How long one round waits for a first fresh row when alone: bounds how late a stop is noticed.
IDLE_WAIT_S = 0.25


@dataclass(frozen=True)
class Decision:
    """What every worker does this round, from the same totals."""

    stop: bool  # somebody stops: everybody stops
    rows: int  # rows in this round's batches, all workers: 0 = nobody has data, no step
    checkpoint_by_clock: bool  # the chief's clock says a checkpoint is due
    partitions: int  # the topic's partition count as the chief knows it


class Ballot:
    """Casts this worker's ballot each round and turns the totals into a ``Decision``."""

    def __init__(self, workers: Workers, max_wait_s: float, checkpoint_due_by_clock: Callable[[], bool],
                 partitions: Callable[[], int]) -> None:
        self.workers = workers
        # Asked of the chief only: its clock and its count of the topic's partitions.
        self._checkpoint_due_by_clock = checkpoint_due_by_clock
        self._partitions = partitions
        self.max_wait_s = max_wait_s
        self._others_had_rows = False
        self.partitions = 1  # as last voted

    def wait_s(self) -> float:
        """How long to wait for fresh rows before voting.

        Alone: briefly, so a stop is noticed soon. In a job: not at all while the others had
        rows last round (they must not wait for this worker), else up to ``max_wait_ms``."""
        if self.workers.count == 1:
            return IDLE_WAIT_S
        return 0.0 if self._others_had_rows else self.max_wait_s

    def cast(self, batch: Batch | None, stop_reason: str) -> Decision:
        ballot = np.zeros(VOTE_SIZE, np.int64)
        ballot[STOP] = 1 if stop_reason else 0
        if batch is not None:
            ballot[ROWS] = batch.n_rows
            ballot[FRESH] = batch.n_fresh
        if self.workers.is_chief:
            ballot[CHECKPOINT] = int(self._checkpoint_due_by_clock())
            ballot[PARTITIONS] = self._partitions()
        totals = self.workers.vote(ballot)
        self.partitions = max(1, int(totals[PARTITIONS]))
        self._others_had_rows = totals[ROWS] > 0
        return Decision(stop=bool(totals[STOP] > 0), rows=int(totals[ROWS]),
                        checkpoint_by_clock=bool(totals[CHECKPOINT] > 0), partitions=self.partitions)

    def anything_to_save(self, mine: bool) -> bool:
        """The last vote: a final checkpoint unless nothing changed on any worker (``mine``: here)."""
        ballot = np.zeros(VOTE_SIZE, np.int64)
        ballot[ROWS] = int(mine)
        return bool(self.workers.vote(ballot)[ROWS] > 0)
