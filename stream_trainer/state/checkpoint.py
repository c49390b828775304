"""Weights, optimizer state, step, Kafka positions and replay membership saved as one unit.

The positions ride inside the TensorFlow checkpoint (a ``PythonState`` holding JSON) rather than
in a side file: a checkpoint and the offsets it reflects can then never disagree, whatever moment
the process dies at. Offsets are committed to the consumer group only after a save succeeds
(``checkpointer.py``), so the group never claims more than a checkpoint holds.

The replay store is saved as its members' ``(partition, offset)``, never as image bytes: a
restart re-reads them from Kafka (``learn/replay_fetch.py``), so a checkpoint stays the size of the
model whatever the store's size.

Multi-worker jobs: every worker joins every save (MultiWorkerMirroredStrategy requires it), the
chief into ``checkpoint.dir``, the others into scratch directories they delete again. At start only
the chief reads the checkpoint; it then broadcasts the weights, optimizer state and training state
to every worker, so workers on other machines need no shared storage.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import tensorflow as tf

from stream_trainer.config import CheckpointConfig
from stream_trainer.errors import CheckpointError, one_line
from stream_trainer.learn.workers import Workers
from stream_trainer.state import leftovers

log = logging.getLogger(__name__)

STATE_FORMAT = 2
_STATE_KEY = "state/.ATTRIBUTES/py_state"
_STEP_KEY = "step/.ATTRIBUTES/VARIABLE_VALUE"


class TrainState(tf.train.experimental.PythonState):  # type: ignore[misc]
    """The JSON part of a checkpoint: topic, next offsets, replay membership."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def serialize(self) -> str:
        return json.dumps(self.data)

    def deserialize(self, string_value: bytes | str) -> None:
        self.data = json.loads(string_value or "{}")


@dataclass(frozen=True)
class Restored:
    step: int
    topic: str
    offsets: dict[int, int]  # empty when the checkpoint was for another topic
    path: str
    replay: dict[str, Any] = field(default_factory=dict)


def _offsets(data: Mapping[str, Any]) -> dict[int, int]:
    return {int(p): int(o) for p, o in data.get("next_offsets", {}).items()}


class CheckpointStore:
    """Owns the checkpoint directory: restore at start, save on schedule."""

    def __init__(self, cfg: CheckpointConfig, model: keras.Model, optimizer: keras.optimizers.Optimizer,
                 topic: str, workers: Workers, scratch_dir: str = "") -> None:
        self.cfg = cfg
        self.model = model
        self.optimizer = optimizer
        self.topic = topic
        self.workers = workers
        with workers.scope():
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
            # The optimizer's slots must exist before a restore (or a broadcast) can fill them.
            optimizer.build(model.trainable_variables)
        self.state = TrainState()
        # A loss-scaled optimizer (mixed_float16) is saved as the Adam inside it: the loss scale
        # re-learns in a few steps, and a job can move between fp16, bf16 and fp32 hosts.
        self._optimizer = getattr(optimizer, "inner_optimizer", optimizer)
        # The learning rate is this job's setting (scaled for its worker count), not training state:
        # a checkpoint written by a job with another number of workers must not bring back its own.
        self._learning_rate = float(self._optimizer.learning_rate.numpy())
        self._ckpt = tf.train.Checkpoint(model=model, optimizer=self._optimizer, step=self.step, state=self.state)
        self.directory = cfg.dir if workers.is_chief else self._scratch(scratch_dir)
        self._manager = tf.train.CheckpointManager(self._ckpt, self.directory, max_to_keep=cfg.keep)
        self._last_step = 0

    def _scratch(self, base: str) -> str:
        return leftovers.make_scratch(base, self.workers.index)  # also removes those of killed workers

    @property
    def last_saved_step(self) -> int:
        return self._last_step

    def restore(self) -> Restored | None:
        """The chief restores the newest readable checkpoint and every worker receives it."""
        found = self._restore_local() if self.workers.is_chief else None
        if self.workers.count > 1:
            self.workers.broadcast_variables([*self.model.variables, *self._optimizer.variables, self.step])
            shared = self.workers.broadcast_json(
                None if found is None else {"path": found.path, "data": self.state.data})
            if shared is None:
                return None
            self.state.data = shared["data"]
            found = self._restored(shared["path"])
        if found is not None:
            self._optimizer.learning_rate = self._learning_rate
            self._last_step = found.step
        return found

    def _restore_local(self) -> Restored | None:
        for path in reversed(self._manager.checkpoints):
            # A truncated data file surfaces from TensorFlow's reader as IndexError ("Read less
            # bytes than requested"), not as an OpError.
            try:
                self._ckpt.restore(path).assert_existing_objects_matched()
            except (tf.errors.OpError, AssertionError, ValueError, IndexError) as exc:
                log.error("checkpoint %s is unreadable (%s); trying an older one", path, one_line(exc))
                continue
            return self._restored(path)
        if self._manager.checkpoints:
            msg = f"no readable checkpoint in {self.cfg.dir} (tried {len(self._manager.checkpoints)})"
            raise CheckpointError(msg)
        return None

    def _restored(self, path: str) -> Restored:
        data = self.state.data
        offsets = _offsets(data)
        if offsets and data.get("topic") != self.topic:
            log.warning("checkpoint %s holds offsets for topic %r, not %r: offsets ignored", path, data.get("topic"),
                        self.topic)
            offsets = {}
        return Restored(step=int(self.step.numpy()), topic=str(data.get("topic", "")), offsets=offsets, path=path,
                        replay=dict(data.get("replay") or {}))

    def save(self, step: int, offsets: Mapping[int, int], replay: Mapping[str, Any] | None = None) -> str:
        """Write weights + optimizer + step + state atomically; raise CheckpointError on failure.

        TensorFlow writes the data files first and the ``checkpoint`` index last, so a save
        that dies half-way leaves the previous checkpoint as the latest. Every worker calls this.
        """
        self.step.assign(step)
        self.state.data = {"format": STATE_FORMAT, "topic": self.topic, "workers": self.workers.count,
                           "next_offsets": {str(p): int(o) for p, o in sorted(offsets.items())},
                           "replay": dict(replay or {}), "saved_at": time.time()}
        try:
            path = self._manager.save(checkpoint_number=step)
        except (tf.errors.OpError, OSError) as exc:
            msg = f"saving checkpoint at step {step} into {self.directory} failed: {one_line(exc)}"
            raise CheckpointError(msg) from exc
        self._last_step = step
        return str(path)

    def close(self) -> None:
        """Remove a non-chief worker's scratch copies."""
        if not self.workers.is_chief:
            leftovers.remove_scratch(self.directory)

@dataclass(frozen=True)
class SavedState:
    """What a checkpoint directory's newest checkpoint holds, read without building a model."""

    path: str
    step: int
    topic: str
    offsets: dict[int, int]
    replay: dict[str, Any]
    workers: int


def read_state(checkpoint_dir: str | Path) -> SavedState | None:
    """The newest checkpoint's state, for operators (``stream-trainer inspect``) and tests."""
    path = tf.train.latest_checkpoint(str(checkpoint_dir))
    return None if path is None else read_checkpoint(path)


def read_checkpoint(path: str) -> SavedState:
    """The state of the checkpoint at ``path`` (a prefix such as ``dir/ckpt-120``)."""
    reader = tf.train.load_checkpoint(path)
    data = json.loads(reader.get_tensor(_STATE_KEY) or "{}")
    return SavedState(path=path, step=int(reader.get_tensor(_STEP_KEY)), topic=str(data.get("topic", "")),
                      offsets=_offsets(data), replay=dict(data.get("replay") or {}),
                      workers=int(data.get("workers", 1)))


def read_positions(checkpoint_dir: str | Path) -> tuple[int, str, dict[int, int]] | None:
    """(step, topic, next offsets) of the newest checkpoint in a directory, without a model."""
    state = read_state(checkpoint_dir)
    return None if state is None else (state.step, state.topic, state.offsets)
