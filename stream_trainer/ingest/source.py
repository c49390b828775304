"""tensorflow-io ``KafkaDataset`` per partition, each read by its own thread into the inbox.

Why ``KafkaDataset`` with explicit ``topic:partition:offset`` and not ``KafkaGroupIODataset``:
the group dataset lets librdkafka auto-commit at fetch time, before a message is trained, so a
crash loses data. Here each partition starts exactly at the offset our checkpoint says, and
``message_offset=True`` hands every message's ``partition:offset`` to the training loop.

Why a thread per partition: with ``eof=False`` tfio's reader blocks in C++ until a message comes
and ignores cancellation. Each reader therefore runs its whole (endless) tf.data loop inside one
TensorFlow op in a thread of its own, putting every message into the inbox (``inbox.py``). An
idle partition blocks only its own thread; a failing one raises in its own thread, where the
failure is logged, counted and the reader restarted exactly where it stopped reading.

tfio bundles librdkafka 1.5.0; the bookkeeping it cannot do (commits, lag, metadata) lives in
``kafka/`` with confluent-kafka.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping

import tensorflow as tf
import tensorflow_io.kafka as tfio_kafka  # `import tensorflow_io` alone has no `.kafka`

from stream_trainer import metrics
from stream_trainer.config import KafkaConfig, SourceConfig
from stream_trainer.errors import InputPipelineError, OffsetResetError, StreamTrainerError
from stream_trainer.ingest.inbox import Inbox
from stream_trainer.kafka import Watermarks, security

log = logging.getLogger(__name__)

# An offset that no longer exists (retention, a recreated topic) must be an error we can act on,
# not librdkafka's silent jump to the log end.
_TFIO_TOPIC = ("auto.offset.reset=error",)
# Messages a reader hands over per step of its loop (the inbox has them as soon as they are read).
_READER_CHUNK = 64


def assigned_partitions(all_partitions: list[int], source: SourceConfig, worker_index: int = 0,
                        worker_count: int = 1) -> list[int]:
    """The partitions this worker reads: the explicit list, else every ``worker_count``-th one.

    Partition p belongs to worker ``p % worker_count``: the split of a topic between the workers
    of a job, stable when partitions are added.
    """
    if source.partitions:
        return sorted(p for p in source.partitions if p in all_partitions)
    return [p for p in all_partitions if p % worker_count == worker_index]


def tfio_config(kafka: KafkaConfig) -> list[str]:
    """tfio's global properties: ours (no group, no commits) plus every ``kafka.client`` property
    its librdkafka 1.5.0 honours; anything it cannot honour is refused by name (kafka/security.py)."""
    return security.tfio_properties(kafka)


def _split_position(position: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    # tfio yields "partition:offset" when message_offset is on; decode_csv parses both numbers in
    # one op: half the CPU of split + to_number.
    partition, offset = tf.io.decode_csv(
        position, record_defaults=[tf.constant(0, tf.int32), tf.constant(0, tf.int64)], field_delim=":")
    return partition, offset


Resolver = Callable[[int, int], int]


class PartitionReader:
    """One partition: tfio reads it from a start offset and puts every message into the inbox."""

    def __init__(self, kafka: KafkaConfig, topic: str, partition: int, inbox: Inbox, poll_timeout_ms: int,
                 group_id: str) -> None:
        self.topic = topic
        self.partition = partition
        self.started_at = -1  # the offset the current read started from
        self.retired = False
        with tf.device("/CPU:0"):
            # The offset of the last message put into the inbox: a restart continues after it.
            self.last_read = tf.Variable(-1, dtype=tf.int64, trainable=False, name=f"last_read_{partition}")
            # A reader replaced by the watchdog cannot be stopped (tfio ignores cancellation); it
            # is retired instead: should it ever receive a message, it no longer hands it on.
            self.active = tf.Variable(True, trainable=False, name=f"reader_active_{partition}")
        servers, config = kafka.bootstrap_servers, tfio_config(kafka)
        options = tf.data.Options()
        # The forwarding map has side effects in offset order: it must never run in parallel.
        options.experimental_optimization.map_parallelization = False
        options.deterministic = True

        def read(start: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
            with tf.device("/CPU:0"):  # device scopes are per thread: this runs in the reader's
                return _read(start, count)

        def _read(start: tf.Tensor, count: tf.Tensor) -> tf.Tensor:
            spec = tf.strings.join([topic, str(partition), tf.strings.as_string(start), "-1"], ":")
            ds = tfio_kafka.KafkaDataset(
                tf.reshape(spec, [1]), servers=servers, group=group_id, eof=False, timeout=poll_timeout_ms,
                config_global=config, config_topic=list(_TFIO_TOPIC), message_key=True, message_offset=True)
            ds = ds.take(count)  # -1: the endless stream

            def forward(value: tf.Tensor, _key: tf.Tensor, position: tf.Tensor) -> tf.Tensor:
                part, offset = _split_position(position)

                def hand_on() -> tf.Tensor:
                    # Nested on purpose: the position is recorded only after the message is in.
                    with tf.control_dependencies([inbox.put(value, part, offset)]), \
                            tf.control_dependencies([self.last_read.assign(offset)]):
                        return tf.identity(offset)

                return tf.cond(self.active.read_value(), hand_on, lambda: tf.constant(-1, tf.int64))

            ds = ds.map(forward).batch(_READER_CHUNK).with_options(options)
            return ds.reduce(tf.constant(0, tf.int64), lambda n, chunk: n + tf.size(chunk, out_type=tf.int64))

        self._read = tf.function(read, input_signature=[tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int64)])

    def read(self, start: int, count: int = -1) -> int:
        """Read from ``start`` (``count`` messages, -1 = forever); raises tf.errors.OpError on failure."""
        self.started_at = start
        return int(self._read(tf.constant(start, tf.int64), tf.constant(count, tf.int64)))

    def position(self) -> int:
        """The next offset this reader will hand on."""
        return self.next_offset if self.next_offset >= 0 else self.started_at

    def retire(self) -> None:
        self.retired = True
        self.active.assign(False)

    @property
    def next_offset(self) -> int:
        """The first offset not yet put into the inbox (-1 before the first message)."""
        last = int(self.last_read.read_value())
        return last + 1 if last >= 0 else -1


class KafkaSource:
    """Every assigned partition's reader, each in its own thread, with bounded restarts.

    A reader that fails is restarted where it stopped reading, after ``resolve(partition, offset)``
    has decided where that is now (the offset may have been deleted by retention, or the topic
    recreated): nothing that was put into the inbox is read twice, nothing after it is skipped.
    More than ``max_restarts`` failures within ``restart_window_s`` (all partitions together) set
    ``failure``: the loop stops with a clear error so that a supervisor restarts the process.
    """

    def __init__(self, kafka: KafkaConfig, topic: str, inbox: Inbox, cfg: SourceConfig, group_id: str,
                 resolve: Resolver, stop: threading.Event, restart_backoff_s: float = 2.0) -> None:
        self.kafka = kafka
        self.topic = topic
        self.inbox = inbox
        self.cfg = cfg
        self.group_id = group_id
        self.resolve = resolve
        self.stop = stop
        self.backoff_s = restart_backoff_s
        self.readers: dict[int, PartitionReader] = {}
        self.restarts = 0
        self.failure: StreamTrainerError | None = None
        self._failures: deque[float] = deque()
        self._lock = threading.Lock()
        self._bounded_left = 0
        self._progress: dict[int, tuple[int, float]] = {}  # partition -> (position, since when)
        self.retired = 0

    def start(self, starts: Mapping[int, int], stops: Mapping[int, int] | None = None) -> KafkaSource:
        """Start reading every partition in ``starts``; with ``stops`` (exclusive), end there."""
        if stops is not None:
            self._bounded_left = len(starts)
        for p, offset in sorted(starts.items()):
            self.add(p, offset, None if stops is None else stops[p] - offset)
        return self

    def add(self, partition: int, start: int, count: int | None = None) -> None:
        """Start reading one more partition (a partition added to the topic while running)."""
        reader = PartitionReader(self.kafka, self.topic, partition, self.inbox, self.cfg.poll_timeout_ms,
                                 self.group_id)
        self.readers[partition] = reader
        threading.Thread(target=self._run, args=(reader, start, count), name=f"kafka-reader-{partition}",
                         daemon=True).start()

    def read_positions(self) -> dict[int, int]:
        return {p: r.next_offset for p, r in self.readers.items()}

    def positions(self) -> dict[int, int]:
        """Per partition, the next offset its reader will hand on (or started from)."""
        return {p: r.position() for p, r in list(self.readers.items())}

    def watch(self, positions: Mapping[int, int], marks: Mapping[int, Watermarks], backlog_full: bool) -> None:
        """The watchdog: tfio logs and waits, instead of failing, on several faults. Replace a reader
        whose position is beyond its partition's log end (the topic was recreated) or that has
        handed on nothing for ``stall_timeout_s`` while messages wait in Kafka and the inbox has
        room. ``positions`` must be read *before* ``marks``, so that a reader that just read a new
        message is never mistaken for one beyond the end.
        """
        now = time.monotonic()
        for p, pos in positions.items():
            reader, m = self.readers.get(p), marks.get(p)
            if reader is None or m is None or self.failure is not None:
                continue
            seen, since = self._progress.get(p, (pos, now))
            if pos != seen:
                seen, since = pos, now
            self._progress[p] = (seen, since)
            if pos > m.high:
                self._replace(reader, pos, f"its position {pos} is beyond the log end {m.high}")
            elif pos < m.high and not backlog_full and now - since > self.cfg.stall_timeout_s:
                self._replace(reader, pos, f"it handed on nothing for {now - since:.0f} s while {m.high - pos} "
                                           f"messages wait (trainer.source.stall_timeout_s)")

    def _replace(self, reader: PartitionReader, pos: int, reason: str) -> None:
        reader.retire()
        with self._lock:
            self.retired += 1
        self._progress.pop(reader.partition, None)
        if self._count_failure(reader, reason):
            return
        log.error("Kafka reader of %s[%d] replaced: %s", self.topic, reader.partition, reason)
        try:
            start = self.resolve(reader.partition, pos)
        except StreamTrainerError as err:
            self._fail(err)
            return
        self.add(reader.partition, start)

    def _run(self, reader: PartitionReader, start: int, count: int | None) -> None:
        while not self.stop.is_set():
            try:
                if count is not None and count <= 0:
                    break
                reader.read(start, -1 if count is None else count)
                break  # only a bounded read returns
            except tf.errors.OpError as exc:
                if reader.retired:  # replaced by the watchdog: its successor reads on
                    return
                resumed = self._after_failure(reader, start, exc)
                if resumed is None:
                    return
                if count is not None:
                    count -= resumed - start
                start = resumed
        if count is not None:
            with self._lock:
                self._bounded_left -= 1
                if self._bounded_left == 0:
                    self.inbox.put_end()

    def _after_failure(self, reader: PartitionReader, start: int, exc: tf.errors.OpError) -> int | None:
        """Count the failure; return where to resume, or None when the source must give up.

        Finding out where to resume can fail too (the topic is being recreated, the broker is
        away): that counts as one more failure of the same reader, retried after the backoff.
        """
        reason = str(exc.message).strip().splitlines()[0][:300]
        resume = reader.next_offset if reader.next_offset >= 0 else start
        while True:
            if self._count_failure(reader, reason):
                return None
            log.error("Kafka reader of %s[%d] failed at offset %d (%s); restarting in %.0f s", self.topic,
                      reader.partition, resume, reason, self.backoff_s)
            if self.stop.wait(self.backoff_s):
                return None
            try:
                return self.resolve(reader.partition, resume)
            except OffsetResetError as err:  # a decision for a person: never retried
                self._fail(err)
                return None
            except StreamTrainerError as err:
                reason = str(err)

    def _count_failure(self, reader: PartitionReader, reason: str) -> bool:
        """Record one failure; True (and ``failure`` set) once there were too many."""
        now = time.monotonic()
        with self._lock:
            self.restarts += 1
            self._failures.append(now)
            while self._failures and now - self._failures[0] > self.cfg.restart_window_s:
                self._failures.popleft()
            too_many = len(self._failures) > self.cfg.max_restarts
        metrics.SOURCE_RESTARTS.labels(self.topic, str(reader.partition)).inc()
        if too_many:
            msg = (f"the Kafka reader of {self.topic}[{reader.partition}] failed {len(self._failures)} times within "
                   f"{self.cfg.restart_window_s:.0f} s (last: {reason}); giving up so a supervisor can restart "
                   f"the trainer (trainer.source.max_restarts)")
            self._fail(InputPipelineError(msg))
        return too_many

    def _fail(self, err: StreamTrainerError) -> None:
        with self._lock:
            if self.failure is None:
                self.failure = err
        log.error("%s", err)
