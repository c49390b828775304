"""The readers' supervisor: one reader per partition, restarted on failure, replaced when stalled.

A reader that fails is restarted where reading stopped (the ledger's read position), after
``resolve(partition, offset)`` has decided where that is now (retention may have deleted it, the
topic may have been recreated): nothing handed on is read twice, nothing after it is skipped.
When ``resolve`` moves a partition back (``on_offset_reset``), the partition starts a new epoch
and ``on_reposition(partition, start, epoch)`` tells the trained-position bookkeeping.

The stall watchdog: tensorflow-io logs and waits, instead of failing, on several faults (a
recreated topic, revoked credentials). A reader whose position is beyond the log end, or that
handed on nothing for ``stall_timeout_s`` while messages wait in Kafka and its share of the
intake has room, is retired and replaced. The stall is timed only over what the watchdog saw:
its clock restarts whenever nothing waited (a caught-up partition that just got a message has not
stalled), after rounds the broker did not answer (``unobserved``) and after a round that came
late (more than half the stall timeout after the one before: a paused broker answers the round
that waits through the pause, with positions read before it). Without that, a broker killed or
paused for longer than the stall timeout had every reader replaced at its first answer, one
failure each, and a worker reading more than ``max_restarts`` partitions gave up with exit 2
after every such outage. "Messages wait" means records a reader can read: a
partition whose log ends in transaction markers has position < high watermark for ever, and is
caught up (``caught_up``). A retired reader's consumer is released as soon as tensorflow-io
returns control to it; should its successor stall too while it is still blocked, the source gives
up (so a supervisor restarts the process) rather than pile up blocked consumers.

More than ``max_restarts`` failures within ``restart_window_s`` (all partitions together) set
``failure``: the loop stops with a clear error so that a supervisor restarts the process.

``KafkaSource`` runs tensorflow-io readers, a thread each; ``consumer_source.ConsumerSource``
applies the same rules to the confluent-kafka reader's one consumer (``consumer.py``), and
``source.make_source`` picks one by ``trainer.source.reader``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Protocol

import tensorflow as tf

from stream_trainer import metrics
from stream_trainer.config import KafkaConfig, SourceConfig
from stream_trainer.errors import InputPipelineError, OffsetResetError, StreamTrainerError, one_line
from stream_trainer.ingest.inbox import Inbox
from stream_trainer.ingest.intake import Intake
from stream_trainer.ingest.ledger import PartitionLedger
from stream_trainer.ingest.reader import PartitionReader
from stream_trainer.kafka import Watermarks
from stream_trainer.threads import Threads

log = logging.getLogger(__name__)

Resolver = Callable[[int, int], int]
Repositioned = Callable[[int, int, int], None]  # (partition, start, epoch)
CaughtUp = Callable[[int, int, int], bool]  # (partition, position, high watermark): only control records left


class ReaderHandle(Protocol):
    """What the supervisor needs of one partition's reader, whichever library reads."""

    partition: int
    epoch: int
    paused: bool  # waiting for room in its intake share: not stalled

    def position(self) -> int: ...

    @property
    def retired(self) -> bool: ...


def assigned_partitions(all_partitions: list[int], source: SourceConfig, worker_index: int = 0,
                        worker_count: int = 1) -> list[int]:
    """The partitions this worker reads: the explicit list, else every ``worker_count``-th one.

    Partition p belongs to worker ``p % worker_count``: the split of a topic between the workers
    of a job, stable when partitions are added.
    """
    if source.partitions:
        return sorted(p for p in source.partitions if p in all_partitions)
    return [p for p in all_partitions if p % worker_count == worker_index]


def staging_share(source: SourceConfig, group: int, partitions: int) -> int:
    """Messages one partition may stage: its part of ``queue_capacity``, at least one decode group."""
    return max(group, source.queue_capacity // max(1, partitions))


class KafkaSource:
    """Every assigned partition's reader, each in its own supervised thread, with bounded restarts."""

    def __init__(self, kafka: KafkaConfig, topic: str, inbox: Inbox, cfg: SourceConfig, group_id: str,
                 resolve: Resolver, stop: threading.Event, threads: Threads, *, share: int = 64, group: int = 64,
                 on_reposition: Repositioned | None = None, caught_up: CaughtUp | None = None,
                 restart_backoff_s: float = 2.0) -> None:
        self.kafka = kafka
        self.topic = topic
        self.cfg = cfg
        self.group_id = group_id
        self.resolve = resolve
        self.stop = stop
        self.threads = threads
        self.on_reposition = on_reposition
        self.caught_up = caught_up
        self.backoff_s = restart_backoff_s
        self.ledger = PartitionLedger()
        self.intake = Intake(inbox, self.ledger, share, group, stop, threads)
        self.readers: dict[int, ReaderHandle] = {}
        self.restarts = 0
        self.retired = 0
        self.failure: StreamTrainerError | None = None
        self._failures: deque[float] = deque()
        self._lock = threading.Lock()
        self._bounded_left = 0
        self._reading = 1  # partitions this worker reads: each reader's share of the read-ahead (reader.py)
        self._progress: dict[int, tuple[int, float]] = {}  # partition -> (position, since when)
        self._watched_at: float | None = None  # the last watchdog round (rounds come every stall_timeout_s / 4)
        self._thread: dict[int, threading.Thread] = {}  # partition -> its reader's thread
        self._blocked: dict[int, threading.Thread] = {}  # partition -> its retired reader's thread, if still alive

    def start(self, starts: Mapping[int, int], stops: Mapping[int, int] | None = None) -> KafkaSource:
        """Start reading every partition in ``starts``; with ``stops`` (exclusive), end there."""
        if stops is not None:
            self._bounded_left = len(starts)
        self._reading = max(1, len(starts))
        self.intake.start()
        for p, offset in sorted(starts.items()):
            self._launch(p, offset, None if stops is None else stops[p], notify=False)
        return self

    def add(self, partition: int, start: int) -> None:
        """Start reading one more partition (a partition added to the topic while running)."""
        self._reading += 1  # the new reader's read-ahead share; the running readers keep theirs
        self._launch(partition, start, None, notify=True)

    def _launch(self, partition: int, start: int, stop_at: int | None, notify: bool) -> None:
        reader = PartitionReader(self.kafka, self.topic, partition, self.group_id, self.cfg.poll_timeout_ms,
                                 self.intake, partitions=self._reading)
        epoch = self._install(reader, start, notify)
        assert epoch is not None  # a new reader is always installed
        self.readers[partition] = reader
        self._thread[partition] = self.threads.start(f"kafka-reader-{partition}",
                                                     lambda: self._run(reader, start, epoch, stop_at))

    def _install(self, reader: ReaderHandle, start: int, notify: bool, resuming: bool = False) -> int | None:
        p = reader.partition
        known, before = p in self.readers, self.ledger.epoch(p)
        epoch = self.intake.install(p, reader, start, only_if_current=resuming)
        if epoch is None:
            return None
        if notify and self.on_reposition is not None and (not known or epoch != before):
            self.on_reposition(p, start, epoch)
        return epoch

    def read_positions(self) -> dict[int, int]:
        return self.ledger.read_positions()

    def positions(self) -> dict[int, int]:
        """Per partition, the next offset its reader will hand on (or started from)."""
        return {p: r.position() for p, r in list(self.readers.items())}

    # -- the watchdog ---------------------------------------------------------------------------
    def watch(self, positions: Mapping[int, int], marks: Mapping[int, Watermarks]) -> None:
        """Replace stalled readers (module docstring). ``positions`` must be read *before*
        ``marks``, so that a reader that just read a new message is never taken for one beyond the end."""
        now = time.monotonic()
        if self._watched_at is not None and now - self._watched_at > self.cfg.stall_timeout_s / 2:
            # A late round: its watermarks took the broker's pause to come back (SIGSTOP answers
            # no round with an error), and ``positions`` were read before it: nothing was seen.
            self._progress.clear()
        self._watched_at = now
        for p, pos in positions.items():
            reader, m = self.readers.get(p), marks.get(p)
            if reader is None or m is None or self.failure is not None:
                continue
            seen, since = self._progress.get(p, (pos, now))
            if pos != seen or pos >= m.high or self.intake.full(p) or reader.paused:
                seen, since = pos, now
            self._progress[p] = (seen, since)
            if pos > m.high:
                self._replace(reader, f"its position {pos} is beyond the log end {m.high}")
            elif pos < m.high and now - since > self.cfg.stall_timeout_s:
                if self.caught_up is not None and self.caught_up(p, pos, m.high):
                    self._progress[p] = (pos, now)  # only transaction markers left: nothing to read
                    continue
                self._replace(reader, f"it handed on nothing for {now - since:.0f} s while {m.high - pos} "
                                      f"offsets wait (trainer.source.stall_timeout_s)")

    def unobserved(self) -> None:
        """A watchdog round could not see the broker (no watermarks): every stall clock restarts at
        the next round that does, so an outage is not counted as the readers' stall."""
        self._progress.clear()

    def _replace(self, reader: ReaderHandle, reason: str) -> None:
        p = reader.partition
        self.intake.retire(p, reader)
        with self._lock:
            self.retired += 1
        self._progress.pop(p, None)
        blocked = self._still_blocked(p)
        if blocked:
            msg = (f"the Kafka reader of {self.topic}[{p}] stalled ({reason}) while {blocked}; giving up so a "
                   f"supervisor restarts the trainer")
            self._fail(InputPipelineError(msg))
            return
        if self._count_failure(p, reason):
            return
        log.error("Kafka reader of %s[%d] replaced: %s", self.topic, p, reason)
        try:
            start = self.resolve(p, self.ledger.read_position(p))
        except StreamTrainerError as err:
            self._fail(err)
            return
        self._relaunch(p, start)

    def _still_blocked(self, partition: int) -> str:
        """Why a replacement would pile up on a blocked predecessor ("" when it would not)."""
        blocked = self._blocked.get(partition)
        if blocked is not None and blocked.is_alive():
            return "the reader it replaced is still blocked in tensorflow-io"
        return ""

    def _relaunch(self, partition: int, start: int) -> None:
        """A new reader for ``partition`` from ``start`` (the old one is retired)."""
        old = self._thread.get(partition)
        self._launch(partition, start, None, notify=True)
        if old is not None and old.is_alive():
            self._blocked[partition] = old
        else:
            self._blocked.pop(partition, None)

    # -- one reader's thread ----------------------------------------------------------------------
    def _run(self, reader: PartitionReader, start: int, epoch: int, stop_at: int | None) -> None:
        while not self.stop.is_set() and not reader.retired:
            if stop_at is not None and start >= stop_at:
                break
            try:
                reader.read(start, epoch, None if stop_at is None else stop_at - start)
                if stop_at is None:
                    return  # retired or stopped: an endless read ends no other way
                start = reader.position()
            except tf.errors.OpError as exc:
                if reader.retired:  # replaced by the watchdog: its successor reads on
                    return
                resumed = self._after_failure(reader.partition, one_line(exc.message))
                if resumed is None:
                    return
                start = resumed
                resumed_epoch = self._install(reader, start, notify=True, resuming=True)
                if resumed_epoch is None:  # replaced by the watchdog while it waited to restart
                    return
                epoch = resumed_epoch
        if stop_at is not None:
            self._bounded_done()

    def _bounded_done(self) -> None:
        """One partition's bounded read is complete; after the last, the intake sends the end marker."""
        with self._lock:
            self._bounded_left -= 1
            if self._bounded_left == 0:
                self.intake.end()

    def _after_failure(self, partition: int, reason: str) -> int | None:
        """Count the failure; return where to resume, or None when the source must give up.

        Finding out where to resume can fail too (the topic is being recreated, the broker is
        away): that counts as one more failure of the same reader, retried after the backoff.
        """
        resume = self.ledger.read_position(partition)
        while True:
            if self._count_failure(partition, reason):
                return None
            log.error("Kafka reader of %s[%d] failed at offset %d (%s); restarting in %.0f s", self.topic,
                      partition, resume, reason, self.backoff_s)
            if self.stop.wait(self.backoff_s):
                return None
            try:
                return self.resolve(partition, resume)
            except OffsetResetError as err:  # a decision for a person: never retried
                self._fail(err)
                return None
            except StreamTrainerError as err:
                reason = one_line(str(err))

    def _count_failure(self, partition: int | None, reason: str) -> bool:
        """Record one failure (``partition`` None: the whole consumer); True (and ``failure`` set)
        once there were too many."""
        now = time.monotonic()
        with self._lock:
            self.restarts += 1
            self._failures.append(now)
            while self._failures and now - self._failures[0] > self.cfg.restart_window_s:
                self._failures.popleft()
            too_many = len(self._failures) > self.cfg.max_restarts
        metrics.SOURCE_RESTARTS.labels(self.topic, "all" if partition is None else str(partition)).inc()
        if too_many:
            what = f"consumer of {self.topic}" if partition is None else f"reader of {self.topic}[{partition}]"
            msg = (f"the Kafka {what} failed {len(self._failures)} times within "
                   f"{self.cfg.restart_window_s:.0f} s (last: {reason}); giving up so a supervisor can restart "
                   f"the trainer (trainer.source.max_restarts)")
            self._fail(InputPipelineError(msg))
        return too_many

    def _fail(self, err: StreamTrainerError) -> None:
        with self._lock:
            if self.failure is None:
                self.failure = err
        log.error("%s", err)
