"""The dead-letter worker: re-read dropped messages, explain them, publish them, mark them done.

Holes in a partition's offset chain (see ``progress.py``) arrive here from the loop. A
supervised thread (``threads.Threads``) re-reads the missing offsets with confluent-kafka,
decodes each message again alone with the pipeline's own decoder (``poison.examine``), produces
the malformed ones unchanged to the dead-letter topic (their own headers kept) with headers
saying where they came from and why, and only then lets the offset tracker move past them: a malformed message is never
lost, and never blocks training.

What stops the trainer instead (an exception out of the thread; the loop then stops with one
line, and the message's position never moved past it, so a restart reads it again):
* a dropped message that decodes alone: it is not malformed, the pipeline failed on it for
  another reason, and dead-lettering it would lose a good message;
* a dead-letter topic that has not accepted anything while ``MAX_BACKLOG`` holes wait: waiting
  longer would only grow memory (holes here, links in the offset tracker) message by message;
* anything unexpected. Transient Kafka errors are retried, as before.

Topics read again from their start on every trainer start (the eval topic) name the same
malformed messages every time: for those, the dead-letter topic is searched for an earlier
record of the message first (``_published_before``), so each is dead-lettered and counted once.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import tensorflow as tf
from confluent_kafka import KafkaException, Message

from stream_trainer import metrics
from stream_trainer.config import PipelineConfig
from stream_trainer.errors import BrokerUnavailableError, InputPipelineError, StreamTrainerError, one_line
from stream_trainer.kafka import Cluster
from stream_trainer.kafka.cluster import DELIVERY_TIMEOUT_S, offset_of
from stream_trainer.quality import poison
from stream_trainer.threads import Threads

log = logging.getLogger(__name__)

# Holes waiting while the dead-letter topic refuses messages: past this, stop rather than grow.
MAX_BACKLOG = 10_000
# A message that fails to decode for a reason other than being malformed is tried this often.
DECODE_ATTEMPTS = 3
# The search for an earlier record of a re-read topic's message: at most this many dead-letter
# records, read from a little before the message's own timestamp (producer clocks differ).
SEARCH_RECORDS = 10_000
SEARCH_CHUNK = 200
CLOCK_SKEW_MS = 10 * 60 * 1000


@dataclass(frozen=True)
class Hole:
    topic: str
    partition: int
    start: int  # first missing offset
    end: int  # the surviving message after the hole (exclusive bound)
    on_done: Callable[[], None]
    # False once the partition was moved back (topic recreated): the hole's offsets now name
    # other messages, which must not be dead-lettered.
    still_wanted: Callable[[], bool] = lambda: True


class DeliveryError(Exception):
    """Messages were not accepted by the dead-letter topic (deleted, not authorised, cluster away)."""


class DeadLetterWorker:
    """A supervised background thread; ``submit`` never blocks the training loop."""

    def __init__(self, cluster: Cluster, dead_letter_topic: str, stop: threading.Event, threads: Threads,
                 decoding: PipelineConfig | None = None, reread_topics: Iterable[str] = (),
                 retry_s: float = 2.0) -> None:
        self.cluster = cluster
        self.dead_letter_topic = dead_letter_topic
        self.stop = stop
        self.threads = threads
        self.decoding = decoding or PipelineConfig()
        self.reread_topics = frozenset(reread_topics)
        self.retry_s = retry_s
        self.sent = 0
        self._holes: queue.Queue[Hole] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> DeadLetterWorker:
        # The producer now rather than at the first malformed message: its threads and sockets
        # then belong to the footprint from the start, and any later rise in them is a leak.
        _ = self.cluster.producer
        self._thread = self.threads.start("dead-letter", self._run)
        return self

    def submit(self, topic: str, partition: int, first: int, end: int, on_done: Callable[[], None] = lambda: None,
               is_current: Callable[[], bool] = lambda: True) -> None:
        """Dead-letter the messages of ``topic[partition]`` in [first, end), then call ``on_done``."""
        self._holes.put(Hole(topic, partition, first, end, on_done, is_current))
        metrics.DEAD_LETTER_BACKLOG.set(self._holes.unfinished_tasks)

    def idle(self) -> bool:
        return self._holes.unfinished_tasks == 0

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                hole = self._holes.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._until_done(hole)
            finally:
                self._holes.task_done()
                metrics.DEAD_LETTER_BACKLOG.set(self._holes.unfinished_tasks)

    def _until_done(self, hole: Hole) -> None:
        """Publish the hole's messages, retrying (never dropping) until the dead-letter topic takes them."""
        pending: dict[int, tuple[Message, poison.Verdict]] | None = None
        while not self.stop.is_set() and hole.still_wanted():
            try:
                if pending is None:
                    messages = self.cluster.read_range(hole.topic, hole.partition, hole.start, hole.end)
                    pending = {offset_of(m): (m, self._verdict(hole.topic, m)) for m in messages}
                    if hole.topic in self.reread_topics:
                        for offset in [o for o, (m, _) in pending.items() if self._published_before(hole.topic, m)]:
                            log.info("%s partition=%d offset=%d is already in %s (an earlier start dead-lettered "
                                     "it)", hole.topic, hole.partition, offset, self.dead_letter_topic)
                            del pending[offset]
                self._publish(hole.topic, pending)
                hole.on_done()
                return
            except (KafkaException, BrokerUnavailableError, DeliveryError) as exc:
                metrics.DEAD_LETTER_FAILURES.inc()
                waiting = self._holes.unfinished_tasks
                if waiting > MAX_BACKLOG:
                    msg = (f"the dead-letter topic '{self.dead_letter_topic}' does not accept messages ({exc}) and "
                           f"{waiting} malformed-message holes wait (more than {MAX_BACKLOG}); stopping before "
                           f"memory grows further: positions stay before them, so a restart dead-letters them")
                    raise StreamTrainerError(msg) from exc
                log.error("dead-lettering %s[%d] offsets %d..%d to %s failed (%s); positions wait, retrying in %.0f s",
                          hole.topic, hole.partition, hole.start, hole.end - 1, self.dead_letter_topic, exc,
                          self.retry_s)
                self.stop.wait(self.retry_s)

    def _verdict(self, topic: str, msg: Message) -> poison.Verdict:
        """Why ``msg`` is malformed, decoded alone by the pipeline's decoder; raise if it is not."""
        where = f"{topic}[{msg.partition()}] offset {offset_of(msg)}"
        failure: Exception | None = None
        for attempt in range(DECODE_ATTEMPTS):
            try:
                verdict = poison.examine(msg.value(), self.decoding.image_size, self.decoding.max_pixels)
            except tf.errors.OpError as exc:  # not a malformed message's error: out of memory, cancelled
                failure = exc
                log.warning("decoding %s again failed (%s), attempt %d of %d", where, one_line(exc.message),
                            attempt + 1, DECODE_ATTEMPTS)
                self.stop.wait(1.0)
                continue
            if verdict is None:
                msg_ = (f"message {where} decodes on its own, yet the decode pipeline dropped it: it is not "
                        f"malformed, so it is not dead-lettered; stopping so that a restart reads it again "
                        f"(its position was not moved past it)")
                raise InputPipelineError(msg_)
            return verdict
        msg_ = (f"message {where} could not be decoded again to classify it ({failure}); stopping, a restart "
                f"reads it again")
        raise InputPipelineError(msg_) from failure

    def _published_before(self, topic: str, msg: Message) -> bool:
        """Whether the dead-letter topic already holds ``msg`` (bounded: ``SEARCH_RECORDS`` records)."""
        _, ts = msg.timestamp()
        first = self.cluster.offset_for_time(self.dead_letter_topic, 0, max(0, ts - CLOCK_SKEW_MS))
        end = min(self.cluster.watermarks(self.dead_letter_topic, [0])[0].high, first + SEARCH_RECORDS)
        wanted = {"dlq.topic": topic.encode(), "dlq.partition": str(msg.partition()).encode(),
                  "dlq.offset": str(offset_of(msg)).encode()}
        while first < end:
            records = self.cluster.read_range(self.dead_letter_topic, 0, first, min(end, first + SEARCH_CHUNK))
            if not records:
                return False
            for record in records:
                headers = dict(record.headers() or [])
                if all(headers.get(k) == v for k, v in wanted.items()):
                    return True
            first = offset_of(records[-1]) + 1
        return False

    def _publish(self, topic: str, pending: dict[int, tuple[Message, poison.Verdict]]) -> None:
        """Produce every pending message; remove each once delivered, so a retry sends only the rest."""
        if not pending:
            return
        producer = self.cluster.producer
        errors: list[str] = []

        def delivered(offset: int) -> Callable[[object, object], None]:
            def callback(err: object, _msg: object) -> None:
                if err is not None:
                    errors.append(str(err))
                    return
                msg, verdict = pending.pop(offset)
                # Counted once delivered: a retried hole is never counted twice.
                metrics.DEAD_LETTERED.labels(topic, verdict.reason).inc()
                metrics.MESSAGES_CONSUMED.labels(topic).inc()
                self.sent += 1
                log.warning("dead-lettered %s partition=%d offset=%d reason=%s: %s", topic, msg.partition(), offset,
                            verdict.reason, verdict.detail)

            return callback

        for offset, (msg, verdict) in list(pending.items()):
            # The record's own headers first (a producer's trace id stays with its rejected
            # message), ours after them: a reader of dict(headers) sees ours.
            headers: list[tuple[str, str | bytes | None]] = [
                *(msg.headers() or []),
                ("dlq.topic", topic.encode()),
                ("dlq.partition", str(msg.partition()).encode()),
                ("dlq.offset", str(offset).encode()),
                ("dlq.reason", verdict.reason.encode()),
                ("dlq.detail", verdict.detail.encode()),
            ]
            producer.produce(self.dead_letter_topic, key=msg.key(), value=msg.value(), headers=headers,
                             on_delivery=delivered(offset))
        # The producer fails undelivered messages after its message.timeout.ms (kafka/cluster.py),
        # so after this flush every message is either delivered or definitively failed.
        producer.flush(DELIVERY_TIMEOUT_S + 5)
        if pending:
            msg_ = f"{len(pending)} not delivered ({'; '.join(sorted(set(errors))[:3]) or 'timed out'})"
            raise DeliveryError(msg_)

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout_s)
