"""One partition's reader: a thread around a plain iterator over tensorflow-io's ``KafkaDataset``.

Why ``KafkaDataset`` with explicit ``topic:partition:offset`` and not ``KafkaGroupIODataset``:
the group dataset lets librdkafka auto-commit at fetch time, before a message is trained, so a
crash loses data. Here each partition starts exactly at the offset our checkpoint says, and
``message_offset=True`` hands every message's ``partition:offset`` on with it.

Why one message at a time and not ``ds.batch(n)``: with ``eof=False`` tfio's reader blocks in C++
until a message comes, so a batch of ``n`` would hold a lone message on a quiet partition until
``n - 1`` more arrived. Each message goes to the intake as soon as it is read.

Why a thread per partition: that blocking read ignores cancellation. An idle partition blocks
only its own thread; a failing one raises in its own thread, where the supervisor
(``supervisor.py``) logs, counts and restarts it. When the reader ends (stopped, retired, a
bounded read done, an error) its iterator is released, and with it the librdkafka consumer and
its threads: ``stream_trainer_kafka_consumers`` counts the ones alive.

tfio bundles librdkafka 1.5.0; the bookkeeping it cannot do (commits, lag, metadata) lives in
``kafka/`` with confluent-kafka. ``tensorflow_io`` is imported when a reader first reads, never at
import: on a stack without it (Python 3.13) the trainer runs with the confluent-kafka reader
(``consumer.py``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import tensorflow as tf
from tensorflow.python.ops import gen_dataset_ops

from stream_trainer import metrics
from stream_trainer.config import KafkaConfig
from stream_trainer.ingest.intake import Intake
from stream_trainer.kafka import security

# An offset that no longer exists (retention, a recreated topic) must be an error we can act on,
# not librdkafka's silent jump to the log end.
_TFIO_TOPIC = ("auto.offset.reset=error",)

# librdkafka's local queues of one worker, in fetches, shared by its partitions; each partition's
# at least _MIN_FETCHES_AHEAD (see read_ahead).
_FETCHES_AHEAD = 32
_MIN_FETCHES_AHEAD = 4

_consumers_lock = threading.Lock()
_consumers = 0


def count_consumer(delta: int) -> None:
    """A reader created (+1) or released (-1) a librdkafka consumer (``stream_trainer_kafka_consumers``)."""
    global _consumers
    with _consumers_lock:
        _consumers += delta
        metrics.KAFKA_CONSUMERS.set(_consumers)


def live_consumers() -> int:
    """librdkafka consumers held by this process's readers right now."""
    with _consumers_lock:
        return _consumers


def read_ahead(kafka: KafkaConfig, partitions: int = 1) -> list[str]:
    """librdkafka 1.5.0's read-ahead for one of a worker's ``partitions``, bounded (its default is
    1 GiB per partition).

    The rule: the worker's readers together hold 32 fetches (32 x ``fetch.message.max.bytes``,
    1 MiB by default, so 32 MiB), split evenly, at least 4 fetches each: ``queued.max.messages.kbytes``
    = 32 MiB for one partition, 8 MiB each for four, 4 MiB each from eight on. A reader holds at
    most that plus one fetch arriving, besides the messages it staged in the intake. Why per
    worker: the worker trains no faster with more partitions, and 32 MiB per partition was most of
    what an added partition cost (docs/benchmarks.md, memory). ``queued.min.messages`` stays at its
    default: in 1.5.0 a consumer that reaches either bound pauses fetching for a while, and a
    small message bound (64) cut one partition's reading to ~100 messages/s, 16 MiB to ~500/s,
    where 32 MiB keeps up with decoding (docs/operations.md has the figures). A ``kafka.client``
    value wins.
    """
    kib = read_ahead_kib(kafka, partitions)
    return [] if kib is None else [f"queued.max.messages.kbytes={kib}"]


def read_ahead_kib(kafka: KafkaConfig, partitions: int = 1) -> int | None:
    """``read_ahead``'s ``queued.max.messages.kbytes`` for one of ``partitions``; None where
    ``kafka.client`` sets it. With 1 it is the worker's whole read-ahead, which the confluent-kafka
    reader's one consumer holds for all partitions (``consumer.py``)."""
    if "queued.max.messages.kbytes" in kafka.client:
        return None
    fetch = int(kafka.client.get("fetch.message.max.bytes", 1048576))
    fetches = max(_MIN_FETCHES_AHEAD, _FETCHES_AHEAD // max(1, partitions))
    return max(1, fetches * fetch // 1024)


def tfio_config(kafka: KafkaConfig, partitions: int = 1) -> list[str]:
    """tfio's global properties: ours (no group, no commits, bounded read-ahead for one of
    ``partitions``) plus every ``kafka.client`` property its librdkafka 1.5.0 honours; anything it
    cannot honour is refused by name (kafka/security.py)."""
    return security.tfio_properties(kafka) + read_ahead(kafka, partitions)


class PartitionReader:
    """Reads one partition from ``start`` (``count`` messages, None = forever) into the intake."""

    paused = False  # it blocks in the intake instead (see the watchdog in supervisor.py)

    def __init__(self, kafka: KafkaConfig, topic: str, partition: int, group_id: str, poll_timeout_ms: int,
                 intake: Intake, partitions: int = 1) -> None:
        self.topic = topic
        self.partition = partition
        self.intake = intake
        self.started_at = -1
        self.next_offset = -1  # the offset after the last message read (-1 before the first)
        self.epoch = 0
        self._servers = kafka.bootstrap_servers
        self._config = tfio_config(kafka, partitions)  # the read-ahead is the worker's, split by ``partitions``
        self._group = group_id
        self._timeout = poll_timeout_ms

    def position(self) -> int:
        """The next offset this reader will read."""
        return self.next_offset if self.next_offset >= 0 else self.started_at

    @property
    def retired(self) -> bool:
        return not self.intake.is_current(self.partition, self)

    def read(self, start: int, epoch: int, count: int | None = None) -> int:
        """Read from ``start`` until retired, stopped or ``count`` messages were read; return how
        many were read. Raises tf.errors.OpError when tensorflow-io fails."""
        self.started_at, self.next_offset, self.epoch = start, -1, epoch
        spec = f"{self.topic}:{self.partition}:{start}:-1"
        read = 0
        import tensorflow_io.kafka as tfio_kafka  # lazily (module docstring); `import tensorflow_io` has no `.kafka`

        with tf.device("/CPU:0"):  # device scopes are per thread: this runs in the reader's
            ds = tfio_kafka.KafkaDataset(
                [spec], servers=self._servers, group=self._group, eof=False, timeout=self._timeout,
                config_global=self._config, config_topic=list(_TFIO_TOPIC), message_offset=True)
            if count is not None:
                ds = ds.take(count)
            iterator = iter(ds)
            next_message = _next_element(iterator)
            count_consumer(+1)
            try:
                while True:
                    try:
                        value, position = next_message()
                    except tf.errors.OutOfRangeError:  # a bounded read is complete
                        break
                    offset = int(position.numpy().rsplit(b":", 1)[1])
                    self.next_offset = offset + 1
                    read += 1
                    if not self.intake.put(self.partition, self, epoch, offset, value):
                        break
            finally:
                del next_message, iterator  # the librdkafka consumer goes with them
                count_consumer(-1)
        return read


def _next_element(iterator: Any) -> Callable[[], list[tf.Tensor]]:
    """The op that ``next(iterator)`` runs, called without the Python around it.

    ``next()`` on an eager tf.data iterator spent ~120 of its ~175 microseconds per element in
    Python (an execution-mode scope, the element's structure), and a reader calls it once per
    message: most of what the tensorflow-io reader cost beyond librdkafka (docs/benchmarks.md).
    This is that call, returning the flat tensors; the end of a bounded read is the same
    OutOfRangeError. Eager execution is synchronous in the trainer, as ``next()`` makes it.
    """
    resource, types, shapes = iterator._iterator_resource, iterator._flat_output_types, iterator._flat_output_shapes
    return lambda: gen_dataset_ops.iterator_get_next(resource, output_types=types, output_shapes=shapes)
