"""The checkpointer: save the job's state, then commit its offsets, as one step.

Like quix-streams' ``Checkpoint`` (flush state, then commit offsets), one object owns the four
things a checkpoint ties together: the offset tracker (what the weights hold), the store (where
weights, optimizer, step and positions go), the replay store's membership, and the committer
(the consumer group's offsets). Its one rule: the group is committed only to positions that a
successful save holds, so the group never claims more than a checkpoint does. A failed save
commits nothing; the previous checkpoint and the previous commit stay as they were.

Every worker calls ``save`` at the same round: gathering the positions and the replay
membership, and the save itself, are collectives. The chief's copy is the job's checkpoint, and
only the chief commits (every worker has a committer: it keeps the worker in the group and
reports its lag).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from stream_trainer.learn.replay import ReplayStore, merge_states
from stream_trainer.learn.workers import Workers
from stream_trainer.state.checkpoint import CheckpointStore
from stream_trainer.state.committer import Committer
from stream_trainer.state.progress import OffsetTracker


@dataclass(frozen=True)
class Saved:
    """A checkpoint written: where, and the job's next offsets it holds (every partition)."""

    path: str
    positions: dict[int, int]


class Checkpointer:
    """Owns tracker, store, committer and replay state as one unit; see the module docstring."""

    def __init__(self, store: CheckpointStore, tracker: OffsetTracker, committer: Committer | None,
                 replay: ReplayStore | None, workers: Workers) -> None:
        self.store = store
        self.tracker = tracker
        self.committer = committer
        self.replay = replay
        self.workers = workers
        self._saved_own: dict[int, int] | None = None  # this worker's positions at the last save attempt

    def save(self, step: int, partitions: int) -> Saved:
        """Save the state at ``step`` (``partitions``: the topic's count, as voted), then commit.

        Raises CheckpointError when the save fails; nothing is committed then."""
        self._saved_own = self.tracker.positions()
        positions = self.workers.gather_positions(self._saved_own, partitions)
        replay = None
        if self.replay is not None:
            states = self.workers.gather_json(self.replay.state())
            replay = merge_states(states) if len(states) > 1 else states[0]
        path = self.store.save(step, positions, replay)
        if self.workers.is_chief and self.committer is not None:
            self.committer.commit(positions)
        return Saved(path, positions)

    def moved_since_save(self) -> bool:
        """True when this worker's positions moved since the last save attempt (or none was made)."""
        return self._saved_own is None or self.tracker.positions() != self._saved_own

    def lag(self) -> int | None:
        """This worker's consumer lag over its partitions, as last measured; None before a measure."""
        lag = self.committer.lag if self.committer is not None else {}
        return sum(lag.values()) if lag else None

    def checksum(self) -> str:
        """SHA-256 over the trainable weights: equal on every worker while they train in step."""
        return weights_checksum(self.store.model)


def weights_checksum(model: Any) -> str:
    """SHA-256 over ``model``'s trainable weights, shortened to 16 hex digits."""
    digest = hashlib.sha256()
    for v in model.trainable_variables:
        digest.update(np.ascontiguousarray(np.asarray(v)).tobytes())
    return digest.hexdigest()[:16]
