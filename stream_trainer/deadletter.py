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

from stream_trainer import metrics, poison
from stream_trainer.kafka import Cluster

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

    def idle(self) -> bool:
        return self._holes.unfinished_tasks == 0

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                hole = self._holes.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                while not self.stop.is_set() and hole.still_wanted():
                    try:
                        self._handle(hole)
                        hole.on_done()
                        break
                    except Exception:  # noqa: BLE001 - broker trouble: retry, never drop the hole
                        log.warning("dead-lettering %s[%d] %d..%d failed; retrying", hole.topic, hole.partition,
                                    hole.start, hole.end - 1, exc_info=True)
                        self.stop.wait(self.retry_s)
            finally:
                self._holes.task_done()

    def _handle(self, hole: Hole) -> None:
        messages = self.cluster.read_range(hole.topic, hole.partition, hole.start, hole.end)
        producer = self.cluster.producer
        failures: list[str] = []
        reasons: list[str] = []

        def delivered(err: object, _msg: object) -> None:
            if err is not None:
                failures.append(str(err))

        for msg in messages:
            verdict = poison.classify(msg.value())
            headers = [
                ("dlq.topic", hole.topic.encode()),
                ("dlq.partition", str(msg.partition()).encode()),
                ("dlq.offset", str(msg.offset()).encode()),
                ("dlq.reason", verdict.reason.encode()),
                ("dlq.detail", verdict.detail.encode()),
            ]
            producer.produce(self.dead_letter_topic, key=msg.key(), value=msg.value(), headers=headers,
                             on_delivery=delivered)
            log.warning("dead-lettered %s partition=%d offset=%d reason=%s: %s", hole.topic, msg.partition(),
                        msg.offset(), verdict.reason, verdict.detail)
            reasons.append(verdict.reason)
        remaining = producer.flush(10)
        if remaining or failures:
            msg_ = f"dead-letter delivery to {self.dead_letter_topic} failed: {remaining} pending, errors {failures[:3]}"
            raise RuntimeError(msg_)
        # Counted only once delivered: a retried hole must not be counted twice.
        for reason in reasons:
            metrics.DEAD_LETTERED.labels(hole.topic, reason).inc()
            metrics.MESSAGES_CONSUMED.labels(hole.topic).inc()
        self.sent += len(reasons)

    def join(self, timeout_s: float) -> None:
        self._thread.join(timeout_s)
