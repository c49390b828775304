"""Where each partition starts, and the input side of one worker as the loop sees it.

Start positions: the checkpoint's, else the consumer group's committed offset, else
``trainer.source.auto_offset_reset``. A position the log no longer has is never silently
replaced: below the log start (retention deleted unread messages) the trainer continues at the
log start and counts the loss; beyond the log end (the topic was recreated, or the checkpoint is
from another cluster) ``trainer.source.on_offset_reset`` decides (fail by default). The same rules
apply when a partition's reader fails while running.

``Inputs`` bundles the Kafka readers, the decode pipeline and the feeder of one worker, watches
the topic for added partitions, and answers the loop's questions (has the input failed, ended,
how many partitions does the topic have).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping

import tensorflow as tf
from confluent_kafka import KafkaException

from stream_trainer import metrics
from stream_trainer.config import Settings
from stream_trainer.errors import OffsetResetError, StreamTrainerError
from stream_trainer.ingest import pipeline
from stream_trainer.ingest.feeder import Dropped, Feeder
from stream_trainer.ingest.fresh import FreshRows
from stream_trainer.ingest.inbox import Inbox
from stream_trainer.ingest.source import assigned_partitions, source_class, staging_share
from stream_trainer.kafka import Cluster, Watermarks
from stream_trainer.threads import Threads

log = logging.getLogger(__name__)

# Told when a partition continues at a new offset (added, or moved back by on_offset_reset):
# (partition, start, epoch). The trained-position bookkeeping downstream restarts its chain there.
Repositioned = Callable[[int, int, int], None]
# At most this many offsets between a reader's position and the log end can be transaction
# markers and still count as caught up (one marker per transaction; a few in a row at most).
_MARKERS_MAX = 64


def checked_start(topic: str, partition: int, offset: int, marks: Watermarks, policy: str) -> int:
    """``offset`` if the log still has it, else what the rules in the module docstring say."""
    if offset < marks.low:
        lost = marks.low - offset
        metrics.MESSAGES_LOST.labels(topic, str(partition), "retention").inc(lost)
        log.error("%s[%d]: offsets %d..%d were deleted by retention before they were trained (%d messages lost); "
                  "continuing at %d", topic, partition, offset, marks.low - 1, lost, marks.low)
        return marks.low
    if offset > marks.high:
        if policy == "fail":
            msg = (f"{topic}[{partition}]: the saved position {offset} is beyond the log end {marks.high} (was the "
                   f"topic recreated, or is the checkpoint from another cluster?); set "
                   f"trainer.source.on_offset_reset to earliest or latest to continue from there")
            raise OffsetResetError(msg)
        target = marks.low if policy == "earliest" else marks.high
        log.warning("%s[%d]: position %d is beyond the log end %d; continuing at %d (on_offset_reset=%s)", topic,
                    partition, offset, marks.high, target, policy)
        return target
    return offset


def start_offsets(cluster: Cluster, settings: Settings, partitions: list[int],
                  saved: Mapping[int, int]) -> dict[int, int]:
    """Per partition: the checkpoint's (``saved``) offset, else the group's committed one, else the reset policy."""
    topic, source = settings.topics.train, settings.trainer.source
    committed = cluster.committed(topic, [p for p in partitions if p not in saved])
    marks = cluster.watermarks(topic, partitions)
    starts: dict[int, int] = {}
    for p in partitions:
        if p in saved:
            offset, origin = saved[p], "checkpoint"
        elif p in committed:
            offset, origin = committed[p], "group"
        else:
            offset = marks[p].low if source.auto_offset_reset == "earliest" else marks[p].high
            origin = source.auto_offset_reset
        starts[p] = checked_start(topic, p, offset, marks[p], source.on_offset_reset)
        log.info("partition %d starts at offset %d (from %s; log end %d)", p, starts[p], origin, marks[p].high)
    return starts


class Inputs:
    """One worker's readers, decode pipeline and feeder; see the module docstring."""

    def __init__(self, settings: Settings, cluster: Cluster, on_reposition: Repositioned, starts: Mapping[int, int],
                 fresh: FreshRows, worker_index: int, worker_count: int, stop: threading.Event,
                 partition_count: int, threads: Threads, on_dropped: Dropped | None = None) -> None:
        self.settings = settings
        self.cluster = cluster
        self.on_reposition = on_reposition
        self.worker_index, self.worker_count = worker_index, worker_count
        self.stop = stop
        self.threads = threads
        t = settings.trainer
        self.topic = settings.topics.train
        group = t.pipeline.decode_group
        # Reading and decoding stay on the CPU, also on a GPU host: the accelerator is for the step.
        with tf.device("/CPU:0"):
            # Two groups in the queue: the pipeline takes one while the next is handed over; the
            # rest of the read-ahead waits per partition in the intake (fairness, bounds).
            self.inbox = Inbox(2 * group)
            decoded = pipeline.decoded_groups(self.inbox, t.pipeline.image_size, group, t.pipeline.decode_threads,
                                              t.pipeline.max_pixels)
        # Either reader's consumers use the group id '<group_id>-tfio' (joined by neither: ACLs
        # granted for it, docs/operations.md, serve both readers).
        self.source = source_class(t.source.chosen_reader())(
            settings.kafka, self.topic, self.inbox, t.source, f"{t.source.group_id}-tfio", self._resolve, stop,
            threads, share=staging_share(t.source, group, len(starts)), group=group, on_reposition=on_reposition,
            caught_up=self._caught_up)
        self._starts = dict(starts)
        self.feeder = Feeder(decoded, fresh, self.source.ledger, stop, on_dropped=on_dropped, threads=threads)
        self._count = partition_count
        self._lock = threading.Lock()

    def start(self) -> Inputs:
        self.source.start(self._starts)
        self.feeder.start()
        self.threads.start("partition-watch", self._watch)
        return self

    # -- what the loop asks ---------------------------------------------------------------------
    def failure(self) -> StreamTrainerError | BaseException | None:
        return self.source.failure or self.feeder.failure

    def exhausted(self) -> bool:
        return self.feeder.exhausted.is_set()

    def partitions(self) -> int:
        with self._lock:
            return self._count

    # -- partitions added while running ---------------------------------------------------------
    def _watch(self) -> None:
        """Every few seconds the reader watchdog; every ``metadata_refresh_s`` new partitions.

        Broker errors (an outage, a leader election) are ridden out: the readers report their
        own way. Anything else ends this thread, and the trainer with it (threads.py)."""
        refresh = self.settings.trainer.source.metadata_refresh_s
        every = min(5.0, refresh, self.settings.trainer.source.stall_timeout_s / 4)
        next_refresh = time.monotonic() + refresh
        while not self.stop.wait(every):
            try:
                positions = self.source.positions()  # before the watermarks: see KafkaSource.watch
                marks = self.cluster.watermarks(self.topic, list(positions), timeout_s=5.0)
            except (StreamTrainerError, KafkaException) as exc:
                self.source.unobserved()  # the readers' stall clocks must not run through an outage
                log.debug("input watch skipped: %s", exc)
                continue
            try:
                self.source.watch(positions, marks)
                if time.monotonic() >= next_refresh:
                    next_refresh = time.monotonic() + refresh
                    self._refresh()
            except (StreamTrainerError, KafkaException) as exc:
                log.debug("input watch skipped: %s", exc)

    def _caught_up(self, partition: int, position: int, high: int) -> bool:
        """Only records no reader hands on (transaction markers, aborted records) lie between
        ``position`` and the log end ``high``. A longer stretch than a few markers is read as a stall."""
        if high - position > _MARKERS_MAX:
            return False
        return not self.cluster.read_range(self.topic, partition, position, high, timeout_s=5.0)

    def _refresh(self) -> None:
        found = self.cluster.partitions(self.topic)
        mine = assigned_partitions(found, self.settings.trainer.source, self.worker_index, self.worker_count)
        new = [p for p in mine if p not in self.source.readers]
        with self._lock:
            self._count = max(self._count, len(found))
        if new:
            self._add(new)

    def _add(self, partitions: list[int]) -> None:
        try:
            starts = start_offsets(self.cluster, self.settings, partitions, {})
        except StreamTrainerError as exc:
            log.error("cannot start reading new partitions %s yet: %s", partitions, exc)
            return
        for p, start in starts.items():
            log.info("partition %d was added to %s; training it from offset %d", p, self.topic, start)
            self.source.add(p, start)  # tells on_reposition (epoch 0 of a new partition)

    def _resolve(self, partition: int, offset: int) -> int:
        """Where a failed reader of ``partition`` resumes (called by its thread before restarting)."""
        marks = self.cluster.watermarks(self.topic, [partition])[partition]
        # A move back (on_offset_reset) starts a new epoch: the source tells on_reposition.
        return checked_start(self.topic, partition, offset, marks, self.settings.trainer.source.on_offset_reset)
