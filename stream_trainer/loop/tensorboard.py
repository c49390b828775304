"""TensorBoard event files: the chief's scalars, eval pictures, config and versions.

The numbers are the ones the loop already has: a status-line ``Reading`` (written when the line
is, every ``log_every_s`` seconds, so the files grow with time, never with steps or messages),
each evaluation's ``EvalResult`` and its pictures (at most one set per
``tensorboard_images_every_s``), and the optimizer's learning rate. Only the
chief writes (``for_worker``): one job, one run in TensorBoard.

The event files are a side channel. Prometheus, the status line and the snapshot PNGs carry the
same numbers, and a full disk or a vanished directory must not take training down with it. So a
failure to write is logged once as a warning (never silently) and the writer is switched off for
the rest of the run; a restart writes again. It is not retried meanwhile: each retry on a full
disk would cost the training thread a failing write and flush.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import keras
import numpy as np
import tensorflow as tf
import yaml
from tensorboard.compat.proto import summary_pb2
from tensorboard.plugins.scalar import metadata as scalar_metadata
from tensorboard.util import tensor_util

from stream_trainer.config import Settings
from stream_trainer.kafka.security import redact, secret_values
from stream_trainer.loop.status import Reading
from stream_trainer.quality.evaluate import EvalResult, side_by_side

log = logging.getLogger(__name__)

# Every scalar tag, in one place (docs/metrics.md, "TensorBoard", lists them; so does the test).
LOSS = "train/loss"
LEARNING_RATE = "train/learning_rate"
FRESH_LOSS = "prequential/fresh_loss"
FRESH_IOU = "prequential/fresh_mean_iou"
REPLAY_LOSS = "prequential/replay_loss"
REPLAY_IOU = "prequential/replay_mean_iou"
EVAL_IOU = "eval/mean_iou"
EVAL_ACCURACY = "eval/pixel_accuracy"
FRESH_RATE = "throughput/fresh_images_per_second"
REPLAY_RATE = "throughput/replayed_images_per_second"
STEP_RATE = "throughput/steps_per_second"
LAG = "input/lag_messages"
INPUT_WAIT = "input/wait_fraction"
SCALARS = (LOSS, LEARNING_RATE, FRESH_LOSS, FRESH_IOU, REPLAY_LOSS, REPLAY_IOU, EVAL_IOU, EVAL_ACCURACY,
           FRESH_RATE, REPLAY_RATE, STEP_RATE, LAG, INPUT_WAIT)
SNAPSHOT = "eval/snapshot"  # per example: image | true trimap | predicted trimap
CONFIG = "run/config"
VERSIONS = "run/versions"

# Events queued before the writer flushes by itself (each flush syncs the file): a few status
# lines' worth; checkpoints and the stop flush too, so TensorBoard lags by at most about that.
MAX_QUEUE = 64
FLUSH_MS = 30_000


class Board:
    """One run's event files in ``logdir``; every method is a no-op once writing failed."""

    def __init__(self, logdir: str, learning_rate: Callable[[], float], images_every_s: float = 0.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logdir = logdir
        self._learning_rate = learning_rate
        self._images_every_s = images_every_s
        self._clock = clock
        self._writer: tf.summary.SummaryWriter | None = None
        self._last_eval_step: int | None = None
        self._last_images = float("-inf")
        with self._guard("opening the event file"):
            self._writer = tf.summary.create_file_writer(logdir, max_queue=MAX_QUEUE, flush_millis=FLUSH_MS)

    @property
    def writing(self) -> bool:
        return self._writer is not None

    def started(self, step: int, settings: Settings) -> None:
        """The config (secrets redacted) and the versions that train, once per run."""
        if self._writer is None:
            return
        config = yaml.safe_dump(dataclasses.asdict(settings), sort_keys=False)
        config = redact(config, secret_values(settings.kafka))
        table = "\n".join(f"| {name} | {version} |" for name, version in versions().items())
        with self._at(step, "writing the config"):
            tf.summary.text(CONFIG, "    " + config.replace("\n", "\n    "))
            tf.summary.text(VERSIONS, "| package | version |\n|---|---|\n" + table)

    def reading(self, r: Reading) -> None:
        """A status-line window's numbers, at the step that closed it."""
        if self._writer is None:
            return
        values = {LEARNING_RATE: self._learning_rate(), FRESH_RATE: r.fresh_per_s, REPLAY_RATE: r.replayed_per_s,
                  STEP_RATE: r.steps_per_s, INPUT_WAIT: r.input_wait}
        if r.steps_per_s > 0:  # no step in the window: no loss to show (it is the last one's)
            values[LOSS] = r.loss
        for loss_tag, iou_tag, part in ((FRESH_LOSS, FRESH_IOU, r.fresh), (REPLAY_LOSS, REPLAY_IOU, r.replay)):
            if part is not None:
                values[loss_tag], values[iou_tag] = part
        if r.lag is not None:
            values[LAG] = r.lag
        with self._at(r.step, "writing scalars"):
            _write_scalars(values)

    def evaluation(self, result: EvalResult) -> None:
        """An evaluation's scores and pictures, once per evaluated step (an export may ask again)."""
        if self._writer is None or result.step == self._last_eval_step:
            return
        self._last_eval_step = result.step
        with self._at(result.step, "writing the evaluation"):
            _write_scalars({EVAL_IOU: result.mean_iou, EVAL_ACCURACY: result.pixel_accuracy})
            if result.pictures is not None and self._clock() - self._last_images >= self._images_every_s:
                self._last_images = self._clock()
                rows = side_by_side(result.pictures)
                tf.summary.image(SNAPSHOT, rows, max_outputs=len(rows),
                                 description="image | true trimap | predicted trimap (pet orange, border white)")

    def flush(self) -> None:
        """Onto disk now: at each checkpoint and at the stop."""
        if self._writer is not None:
            with self._guard("flushing"):
                self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            with self._guard("closing"):
                self._writer.close()
            self._writer = None

    @contextmanager
    def _at(self, step: int, what: str) -> Iterator[None]:
        """Write at ``step``; callers return first when the writer is off."""
        assert self._writer is not None
        with self._guard(what):
            # set_as_default, not as_default: leaving as_default's context flushes, and each flush
            # syncs the file. This writer is the only one the trainer has (per thread, TF's rule).
            self._writer.set_as_default(step=step)
            yield

    @contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        try:
            yield
        except (tf.errors.OpError, OSError) as exc:
            writer, self._writer = self._writer, None
            log.warning("TensorBoard: %s in %s failed (%s); no more event files this run, training goes on",
                        what, self.logdir, " ".join(str(exc).split()))
            if writer is not None:
                with suppress(tf.errors.OpError, OSError):  # already reported: it is dropped for failing
                    writer.close()


def for_worker(settings: Settings, is_chief: bool, optimizer: keras.optimizers.Optimizer) -> Board | None:
    """The chief's board, or None: another worker, or ``trainer.loop.tensorboard_dir`` empty."""
    logdir = settings.trainer.loop.tensorboard_dir
    if not is_chief or not logdir:
        return None

    def learning_rate() -> float:
        return float(keras.ops.convert_to_numpy(optimizer.learning_rate))

    return Board(logdir, learning_rate, settings.trainer.loop.tensorboard_images_every_s)


def _write_scalars(values: dict[str, float]) -> None:
    """One event holding every scalar, exactly as ``tf.summary.scalar`` writes each: one eager op
    instead of one per tag (13 ``tf.summary.scalar`` calls took 7x as long on a loaded CPU)."""
    metadata = scalar_metadata.create_summary_metadata(display_name=None, description=None)
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag=tag, metadata=metadata, tensor=tensor_util.make_tensor_proto(np.float32(v)))
        for tag, v in values.items()])
    tf.summary.experimental.write_raw_pb(summary.SerializeToString())


def versions() -> dict[str, str]:
    """What trains: the versions a report about a run needs."""
    import confluent_kafka

    out = {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
           "tensorflow-io": _installed("tensorflow-io"), "confluent-kafka": confluent_kafka.version()[0],
           "librdkafka (confluent-kafka)": confluent_kafka.libversion()[0],
           "stream-trainer": _installed("stream-trainer")}
    if out["tensorflow-io"] != "not installed":
        out["librdkafka (tensorflow-io)"] = "1.5.0 (bundled)"
    return out


def _installed(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"
