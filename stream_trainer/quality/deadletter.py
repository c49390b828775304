"""The dead-letter worker: re-read dropped messages, explain them, publish them, mark them done.

Holes in a partition's offset chain (see ``progress.py``) arrive here from the loop. A
background thread re-reads the missing offsets with confluent-kafka, classifies each message,
produces it unchanged to the dead-letter topic with headers saying where it came from and why,
and only then lets the offset tracker move past it: a malformed message is never lost, and
never blocks training.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from confluent_kafka import KafkaException, Message

from stream_trainer import metrics
from stream_trainer.errors import StreamTrainerError
from stream_trainer.kafka import Cluster
from stream_trainer.kafka.cluster import DELIVERY_TIMEOUT_S, offset_of
from stream_trainer.quality import poison

log = logging.getLogger(__name__)


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
    """Background thread; ``submit`` never blocks the training loop."""

    def __init__(self, cluster: Cluster, dead_letter_topic: str, stop: threading.Event,
                 retry_s: float = 2.0) -> None:
        self.cluster = cluster
        self.dead_letter_topic = dead_letter_topic
        self.stop = stop
        self.retry_s = retry_s
        self.sent = 0
        self._holes: queue.Queue[Hole] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="dead-letter", daemon=True)

    def start(self) -> DeadLetterWorker:
        self._thread.start()
        return self

    def submit(self, topic: str, partition: int, start: int, end: int, on_done: Callable[[], None] = lambda: None,
               still_wanted: Callable[[], bool] = lambda: True) -> None:
        """Dead-letter the messages of ``topic[partition]`` in [start, end), then call ``on_done``."""
        self._holes.put(Hole(topic, partition, start, end, on_done, still_wanted))
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
                    pending = {offset_of(m): (m, poison.classify(m.value())) for m in messages}
                self._publish(hole.topic, pending)
                hole.on_done()
                return
            except (KafkaException, StreamTrainerError, DeliveryError) as exc:
                metrics.DEAD_LETTER_FAILURES.inc()
                log.error("dead-lettering %s[%d] offsets %d..%d to %s failed (%s); positions wait, retrying in %.0f s",
                          hole.topic, hole.partition, hole.start, hole.end - 1, self.dead_letter_topic, exc,
                          self.retry_s)
                self.stop.wait(self.retry_s)

    def _publish(self, topic: str, pending: dict[int, tuple[Message, poison.Verdict]]) -> None:
        """Produce every pending message; remove each once delivered, so a retry sends only the rest."""
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
            headers: list[tuple[str, str | bytes | None]] = [
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
        self._thread.join(timeout_s)
