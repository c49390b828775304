"""Every partition of one worker through one confluent-kafka consumer, read in one supervised thread.

The alternative to ``reader.py`` (``trainer.source.reader: confluent-kafka``), behind the same
supervisor rules (``supervisor.ConsumerSource``) and the same intake, ledger and inbox.

Why one consumer: a tensorflow-io reader costs one librdkafka consumer per partition (about
60 MiB and 10 threads each); one consumer fetches every partition of a broker over one
connection, and its read-ahead (``queued.max.messages.kbytes``, 32 MiB unless ``kafka.client``
says otherwise) is one bound for all of them.

Why ``assign`` with explicit offsets, not ``subscribe``: as in ``reader.py``, each partition starts
exactly where the checkpoint says, librdkafka commits and stores nothing (``enable.auto.commit``
and ``enable.auto.offset.store`` off) and joins no group, so the group's offsets stay the
committer's, and ``auto.offset.reset=error`` turns an offset that no longer exists into an error
the supervisor resolves (retention, a recreated topic) instead of a silent jump.

Why pause instead of blocking: one thread reads every partition, so a partition whose intake
share is full must not hold up the others. Its message is refused (``Intake.offer``), the
partition paused (``Consumer.pause``: no more fetches) and remembered at that offset; once its
share is half empty it is sought back to that offset and resumed. The seek drops whatever
librdkafka had fetched for it before the pause, so the next message handed on is the refused one.

What the reader carries that tensorflow-io cannot: the record's CreateTime (when the producer
set it, timestamp type CREATE_TIME), handed on with the message for freshness (``feeder.py``).
Headers are not handed on: the wire contract (docs/wire-format.md) puts everything the trainer
needs in the Example, and a dead letter carries its record's original headers (``deadletter.py``).

Errors: an error of one partition (its offset out of range, its topic gone) unassigns that
partition and reports it to the supervisor, which restarts it where reading stopped after the
same backoff and ``resolve`` as a failed tensorflow-io reader; the other partitions read on. An
error of the whole consumer that librdkafka retries itself (all brokers down, a transport error)
is transient and only logged; a fatal one, or an exception from ``consume``, re-creates the
consumer after the supervisor counted it and waited its backoff.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import TIMESTAMP_CREATE_TIME, Consumer, KafkaError, KafkaException, Message, TopicPartition

from stream_trainer.config import KafkaConfig
from stream_trainer.errors import ConfigError, one_line
from stream_trainer.ingest.intake import Intake
from stream_trainer.ingest.reader import count_consumer, read_ahead_kib
from stream_trainer.kafka import client_config

log = logging.getLogger(__name__)

# Messages one consume() call returns at most: enough to amortise the call, few enough that one
# partition's burst is handed on (or refused) in a few milliseconds.
_BATCH = 256
# The broker's long poll of a fetch (librdkafka's default 500 ms): see SharedConsumer.__init__.
_FETCH_WAIT_MS = 100
# While some partitions are paused, how often the thread looks whether they have room again.
_PAUSED_POLL_S = 0.01
# Errors librdkafka retries by itself: logged, never a failure (the watchdog catches a stall).
_TRANSIENT = {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT, KafkaError._RESOLVE,
              KafkaError._PARTITION_EOF, KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
              KafkaError.REQUEST_TIMED_OUT, KafkaError.NETWORK_EXCEPTION}


class AssignedPartition:
    """One partition's part of the shared consumer: what a ``PartitionReader`` is to tensorflow-io.

    The intake knows it as the partition's reader (a replaced one is refused under its lock); the
    watchdog reads its position and whether it is paused."""

    def __init__(self, topic: str, partition: int, intake: Intake) -> None:
        self.topic = topic
        self.partition = partition
        self.intake = intake
        self.started_at = -1
        self.next_offset = -1  # the offset after the last message handed on (-1 before the first)
        self.epoch = 0
        self.paused = False  # waiting for room in its share: not stalled

    def position(self) -> int:
        """The next offset this partition will hand on."""
        return self.next_offset if self.next_offset >= 0 else self.started_at

    @property
    def retired(self) -> bool:
        return not self.intake.is_current(self.partition, self)


@dataclass
class _Slot:
    handle: AssignedPartition
    next: int  # the next offset to hand on (a paused partition resumes here)
    epoch: int
    stop_at: int | None  # exclusive; None = forever


# What the consumer tells its supervisor (``ConsumerSource``).
PartitionFailed = Callable[[AssignedPartition, int | None, str], None]  # (handle, stop_at, reason)
ConsumerFailed = Callable[[str], bool]  # True: re-create the consumer (after the backoff); False: give up
PartitionDone = Callable[[int], None]  # a bounded read of this partition is complete


class SharedConsumer:
    """One consumer and its thread; other threads only ask (``assign``, ``recreate``), it acts."""

    def __init__(self, kafka: KafkaConfig, topic: str, group_id: str, poll_timeout_ms: int, intake: Intake,
                 stop: threading.Event, *, on_partition_failed: PartitionFailed, on_consumer_failed: ConsumerFailed,
                 on_done: PartitionDone) -> None:
        self.topic = topic
        self._intake = intake
        self._stop = stop
        self._poll_s = poll_timeout_ms / 1000
        self._partition_failed = on_partition_failed
        self._consumer_failed = on_consumer_failed
        self._done = on_done
        # group.id: librdkafka wants one; with assign() and no commits it joins nothing.
        self._conf = client_config(kafka, **{
            "group.id": group_id, "enable.auto.commit": False, "enable.auto.offset.store": False,
            "auto.offset.reset": "error", "enable.partition.eof": False})
        # A resumed partition joins the next fetch request to its broker, which waits while an idle
        # partition's long poll is in flight: librdkafka's 500 ms would delay every resume that long.
        self._conf.setdefault("fetch.wait.max.ms", _FETCH_WAIT_MS)
        # The worker's read-ahead, the tensorflow-io readers' total (32 MiB by default), not
        # librdkafka's 64 MiB: ~18 s of what training takes on a 2-core CPU (3.7 MB/s, docs/benchmarks.md).
        kib = read_ahead_kib(kafka)
        if kib is not None:
            self._conf["queued.max.messages.kbytes"] = kib
        self._lock = threading.Lock()
        self._wanted: dict[int, _Slot] = {}  # asked for, not yet applied by the thread
        self._recreate = False
        self._slots: dict[int, _Slot] = {}  # the thread's own: what the consumer is assigned
        self.beat = time.monotonic()  # the thread's last round (a consumer stuck in C++ stops it)

    # -- asked from other threads -----------------------------------------------------------------
    def assign(self, handle: AssignedPartition, start: int, epoch: int, stop_at: int | None) -> None:
        """Read ``handle``'s partition from ``start`` (replacing whatever read it before)."""
        handle.started_at, handle.next_offset, handle.epoch, handle.paused = start, -1, epoch, False
        with self._lock:
            self._wanted[handle.partition] = _Slot(handle, start, epoch, stop_at)

    def recreate(self) -> None:
        """Close the consumer and read every partition on with a new one (the stall watchdog's remedy)."""
        with self._lock:
            self._recreate = True

    def stuck_s(self) -> float:
        """Seconds since the thread last came round (it never blocks longer than a poll or a callback)."""
        return time.monotonic() - self.beat

    # -- the thread -------------------------------------------------------------------------------
    def run(self) -> None:
        """The consumer's thread: until ``stop``, apply what was asked, resume, consume, hand on."""
        consumer: Consumer | None = None
        try:
            while not self._stop.is_set():
                self.beat = time.monotonic()
                with self._lock:
                    wanted, self._wanted = list(self._wanted.values()), {}
                    recreate, self._recreate = self._recreate, False
                if consumer is None or recreate:
                    self._slots.update((s.handle.partition, s) for s in wanted)
                    consumer = self._renew(consumer)
                else:
                    for slot in wanted:
                        self._assign(consumer, slot)
                self._resume_ready(consumer)
                try:
                    messages = self._consume(consumer)
                except KafkaException as exc:
                    if not self._consumer_failed(_reason(exc)):
                        return
                    consumer = self._renew(consumer)
                    continue
                for msg in messages:
                    if self._handle(consumer, msg):
                        if not self._consumer_failed(_reason(msg.error())):
                            return
                        consumer = self._renew(consumer)
                        break
        finally:
            if consumer is not None:
                self._close(consumer)

    def _renew(self, old: Consumer | None) -> Consumer:
        if old is not None:
            self._close(old)
        try:
            consumer = Consumer(self._conf)
        except KafkaException as exc:
            msg = f"config key 'kafka.client': librdkafka refuses the settings ({_reason(exc)})"
            raise ConfigError(msg) from exc
        count_consumer(+1)
        for p, slot in list(self._slots.items()):
            slot.handle.paused = False
            if slot.stop_at is not None and slot.next >= slot.stop_at:
                del self._slots[p]
                self._done(p)
        if self._slots:
            consumer.assign([TopicPartition(self.topic, p, s.next) for p, s in sorted(self._slots.items())])
        return consumer

    def _close(self, consumer: Consumer) -> None:
        try:
            consumer.close()
        except (KafkaException, RuntimeError) as exc:
            log.debug("closing the Kafka consumer: %s", exc)
        count_consumer(-1)

    def _assign(self, consumer: Consumer, slot: _Slot) -> None:
        p = slot.handle.partition
        if p in self._slots:
            consumer.incremental_unassign([TopicPartition(self.topic, p)])
            del self._slots[p]
        if slot.stop_at is not None and slot.next >= slot.stop_at:
            self._done(p)
            return
        consumer.incremental_assign([TopicPartition(self.topic, p, slot.next)])
        self._slots[p] = slot

    def _unassign(self, consumer: Consumer, p: int) -> _Slot:
        consumer.incremental_unassign([TopicPartition(self.topic, p)])
        return self._slots.pop(p)

    def _resume_ready(self, consumer: Consumer) -> None:
        """Seek paused partitions back to their refused message and resume those with room again."""
        room = self._intake.share // 2
        for p, slot in list(self._slots.items()):
            if slot.handle.paused and self._intake.staged(p) <= room:
                tp = TopicPartition(self.topic, p, slot.next)
                try:
                    consumer.seek(tp)
                    consumer.resume([tp])
                except KafkaException as exc:  # not fetching yet, say: a fresh assignment does the same
                    log.debug("resuming %s[%d] by seeking failed (%s); assigning it afresh", self.topic, p,
                              _reason(exc))
                    consumer.incremental_unassign([TopicPartition(self.topic, p)])
                    consumer.incremental_assign([tp])
                slot.handle.paused = False

    def _consume(self, consumer: Consumer) -> list[Message]:
        paused = [p for p, s in self._slots.items() if s.handle.paused]
        if self._slots and len(paused) == len(self._slots):
            self._intake.wait_for_room(paused, self._intake.share // 2, self._poll_s)
            return []
        if not self._slots:
            self._stop.wait(self._poll_s)
            return []
        return consumer.consume(num_messages=_BATCH, timeout=_PAUSED_POLL_S if paused else self._poll_s)

    def _handle(self, consumer: Consumer, msg: Message) -> bool:
        """Hand one message on (or pause its partition); True when the whole consumer failed."""
        err = msg.error()
        if err is not None:
            return self._error(consumer, msg, err)
        p = msg.partition()
        slot = self._slots.get(p) if p is not None else None
        if slot is None or slot.handle.paused:
            return False  # unassigned meanwhile, or fetched before the pause: read again after it
        offset = msg.offset()
        assert p is not None and offset is not None
        if slot.stop_at is not None and offset >= slot.stop_at:
            self._unassign(consumer, p)
            self._done(p)
            return False
        kind, stamp = msg.timestamp()
        created = stamp if kind == TIMESTAMP_CREATE_TIME and stamp > 0 else 0
        handle = slot.handle
        staged = self._intake.offer(p, handle, slot.epoch, offset, msg.value() or b"", created)
        if staged is None:  # its share is full: stop fetching it, not reading the others
            consumer.pause([TopicPartition(self.topic, p)])
            slot.next, handle.paused = offset, True
            return False
        if not staged:  # retired (its successor's assignment follows) or stopping
            self._unassign(consumer, p)
            return False
        slot.next = handle.next_offset = offset + 1
        if slot.stop_at is not None and slot.next >= slot.stop_at:
            self._unassign(consumer, p)
            self._done(p)
        return False

    def _error(self, consumer: Consumer, msg: Message, err: KafkaError) -> bool:
        p = msg.partition()
        if err.fatal():
            return True
        if p is not None and p in self._slots and msg.topic() == self.topic and err.code() not in _TRANSIENT:
            slot = self._unassign(consumer, p)
            self._partition_failed(slot.handle, slot.stop_at, one_line(err.str()))
            return False
        log.debug("Kafka consumer of %s: %s (librdkafka retries)", self.topic, one_line(err.str()))
        return False


def _reason(exc: Any) -> str:
    err = exc.args[0] if isinstance(exc, KafkaException) and exc.args else exc
    return one_line(err.str() if isinstance(err, KafkaError) else str(err))
