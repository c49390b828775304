"""Weights, optimizer state, step and Kafka positions saved as one unit; exports for serving.

The positions ride inside the TensorFlow checkpoint (a string variable holding JSON) rather
than in a side file: a checkpoint and the offsets it reflects can then never disagree, whatever
moment the process dies at. Offsets are committed to the consumer group only after a save
succeeds (``committer.py``), so the group never claims more than a checkpoint holds.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from stream_trainer.config import CheckpointConfig
from stream_trainer.errors import CheckpointError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Restored:
    step: int
    offsets: dict[int, int]  # empty when the checkpoint was for another topic
    path: str


class CheckpointStore:
    """Owns the checkpoint directory: restore at start, save on schedule, export after saving."""

    def __init__(self, cfg: CheckpointConfig, model: keras.Model, optimizer: keras.optimizers.Optimizer,
                 topic: str) -> None:
        self.cfg = cfg
        self.model = model
        self.topic = topic
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self._positions = tf.Variable("", dtype=tf.string, trainable=False, name="kafka_positions")
        # The optimizer's slots must exist before a restore can fill them.
        optimizer.build(model.trainable_variables)
        self._ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, step=self.step,
                                         kafka_positions=self._positions)
        self._manager = tf.train.CheckpointManager(self._ckpt, cfg.dir, max_to_keep=cfg.keep)
        self._last_step = 0
        self._last_time = time.monotonic()

    @property
    def last_saved_step(self) -> int:
        return self._last_step

    def restore(self) -> Restored | None:
        """Restore the newest readable checkpoint; a corrupt newest one falls back to older ones."""
        for path in reversed(self._manager.checkpoints):
            # A truncated data file surfaces from TensorFlow's reader as IndexError ("Read less
            # bytes than requested"), not as an OpError.
            try:
                self._ckpt.restore(path).assert_existing_objects_matched()
            except (tf.errors.OpError, AssertionError, ValueError, IndexError) as exc:
                log.error("checkpoint %s is unreadable (%s); trying an older one", path, str(exc).splitlines()[0])
                continue
            saved = json.loads(self._positions.numpy().decode() or "{}")
            offsets = {int(p): int(o) for p, o in saved.get("next_offsets", {}).items()}
            if offsets and saved.get("topic") != self.topic:
                log.warning("checkpoint %s holds offsets for topic %r, not %r: offsets ignored",
                            path, saved.get("topic"), self.topic)
                offsets = {}
            self._last_step = int(self.step.numpy())
            return Restored(step=self._last_step, offsets=offsets, path=path)
        if self._manager.checkpoints:
            msg = f"no readable checkpoint in {self.cfg.dir} (tried {len(self._manager.checkpoints)})"
            raise CheckpointError(msg)
        return None

    def expired(self, step: int) -> bool:
        """True when the step interval or the time interval since the last save has passed."""
        by_steps = self.cfg.every_steps > 0 and step - self._last_step >= self.cfg.every_steps
        by_time = self.cfg.every_seconds > 0 and time.monotonic() - self._last_time >= self.cfg.every_seconds
        return step > self._last_step and (by_steps or by_time)

    def save(self, step: int, offsets: Mapping[int, int]) -> str:
        """Write weights + optimizer + step + next offsets atomically; raise CheckpointError on failure.

        TensorFlow writes the data files first and the ``checkpoint`` index last, so a save
        that dies half-way leaves the previous checkpoint as the latest.
        """
        self.step.assign(step)
        self._positions.assign(json.dumps({"topic": self.topic, "next_offsets": {str(p): int(o) for p, o in offsets.items()}}))
        try:
            path = self._manager.save(checkpoint_number=step)
        except (tf.errors.OpError, OSError) as exc:
            msg = f"saving checkpoint at step {step} into {self.cfg.dir} failed: {str(exc).splitlines()[0]}"
            raise CheckpointError(msg) from exc
        self._last_step = step
        self._last_time = time.monotonic()
        return str(path)

    def export(self, step: int, offsets: Mapping[int, int]) -> Path:
        """Write ``model.keras`` (+ ``model.json`` metadata) for serving via temp file + rename."""
        out = Path(self.cfg.export_dir)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".model-{os.getpid()}.keras"  # Keras insists on the .keras suffix
        final = out / "model.keras"
        try:
            self.model.save(tmp)
            os.replace(tmp, final)
            meta = out / ".model.json.tmp"
            meta.write_text(json.dumps({"step": step, "topic": self.topic, "exported_at": time.time(),
                                        "next_offsets": {str(p): o for p, o in offsets.items()}}, indent=1))
            os.replace(meta, out / "model.json")
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            msg = f"exporting the model into {out} failed: {exc}"
            raise CheckpointError(msg) from exc
        return final


def read_positions(checkpoint_dir: str | Path) -> tuple[int, str, dict[int, int]] | None:
    """(step, topic, next offsets) of the newest checkpoint in a directory, without a model.

    For operators and tests: what a restart would resume from.
    """
    path = tf.train.latest_checkpoint(str(checkpoint_dir))
    if path is None:
        return None
    reader = tf.train.load_checkpoint(path)
    step = int(reader.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE"))
    saved = json.loads(reader.get_tensor("kafka_positions/.ATTRIBUTES/VARIABLE_VALUE").decode() or "{}")
    offsets = {int(p): int(o) for p, o in saved.get("next_offsets", {}).items()}
    return step, str(saved.get("topic", "")), offsets
