"""The Kafka side of pet-producer: client settings, pacing, and delivery bookkeeping.

Counts are taken from delivery reports, not produce calls: a message is "sent" only when the
broker acknowledged it with acks=all, so the summary matches what a consumer will find.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, Message, Producer

from producer import metrics
from stream_trainer.config import Settings
from stream_trainer.kafka import client_config

log = logging.getLogger(__name__)

# librdkafka counts record framing against message.max.bytes; leave room for it (and the key)
# above producer.message_max_bytes so that every value we accept is also accepted by the client.
_FRAMING_BYTES = 1024
# Bound the client's buffer: at ~50 KB per message the 1 GB default would hide a stalled broker.
_QUEUE_KBYTES = 64 * 1024


class _LibrdkafkaLog:
    """Routes librdkafka's own log lines to DEBUG: error_cb already reports what matters, once,
    while librdkafka repeats a connection failure on every reconnect attempt."""

    def log(self, level: int, msg: str, *args: object) -> None:
        log.debug(msg, *args)


def producer_config(settings: Settings, error_cb: Callable[[KafkaError], None] | None = None) -> dict[str, object]:
    """librdkafka settings: the user's kafka.client pass-through plus what replay needs."""
    p = settings.producer
    extra: dict[str, object] = {
        # Exactly one copy per produce call, in order per partition, even across broker retries.
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": p.compression,
        "message.max.bytes": p.message_max_bytes + _FRAMING_BYTES,
        "queue.buffering.max.kbytes": _QUEUE_KBYTES,
        "linger.ms": 10,
        # The Java client's key hash, so Java/Go producers of the same ids pick the same partitions.
        "partitioner": "murmur2_random",
        "logger": _LibrdkafkaLog(),
    }
    if error_cb is not None:
        extra["error_cb"] = error_cb
    conf = client_config(settings.kafka, **extra)
    # The guarantees above are not optional; a pass-through key must not weaken them.
    conf["enable.idempotence"] = True
    conf["acks"] = "all"
    return conf


class RateLimiter:
    """Paces calls to ``rate`` per second on a fixed schedule (0 = unlimited).

    Falling behind (a slow source) does not earn a burst later: the schedule restarts when it is
    more than a second late.
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self._next: float | None = None

    def wait(self, stop: threading.Event) -> bool:
        """Block until the next slot; False if ``stop`` was set meanwhile."""
        if self.rate <= 0:
            return not stop.is_set()
        now = self.clock()
        if self._next is None or now - self._next > 1.0:
            self._next = now
        delay = self._next - now
        if delay > 0 and stop.wait(delay):
            return False
        self._next += 1.0 / self.rate
        return not stop.is_set()


class Sender:
    """Produces messages and keeps the delivery counts; all callbacks run on the caller's thread."""

    def __init__(self, producer: Producer, clock: Callable[[], float] = time.monotonic) -> None:
        self.producer = producer
        self.clock = clock
        self.produced = 0
        self.sent = 0
        self.failed = 0
        self.bytes = 0
        self.sent_by_topic: Counter[str] = Counter()
        self._round_robin = 0
        self._last_error = ""

    @property
    def in_flight(self) -> int:
        return self.produced - self.sent - self.failed

    def send(self, topic: str, key: str, value: bytes, stop: threading.Event,
             partitions: int | None = None) -> bool:
        """Queue one message; ``partitions`` set = round robin over them. False if stopped first.

        When the client's queue is full this waits for deliveries instead of dropping the message.
        """
        extra: dict[str, Any] = {}
        if partitions is not None:
            extra["partition"] = self._round_robin % partitions
        start = self.clock()

        def on_delivery(err: KafkaError | None, msg: Message) -> None:
            self._delivered(err, topic, len(value), start)

        while True:
            try:
                self.producer.produce(topic, value=value, key=key.encode(), on_delivery=on_delivery, **extra)
                break
            except BufferError:
                if stop.is_set():
                    return False
                self.producer.poll(0.1)
        self.produced += 1
        if partitions is not None:
            self._round_robin += 1
        self.producer.poll(0)
        return True

    def _delivered(self, err: KafkaError | None, topic: str, size: int, start: float) -> None:
        metrics.DELIVERY_LATENCY.observe(self.clock() - start)
        if err is not None:
            self.failed += 1
            metrics.SEND_ERRORS.labels(topic=topic).inc()
            if str(err) != self._last_error:  # one line per distinct error, not one per message
                self._last_error = str(err)
                log.warning("delivery to %s failed: %s", topic, err)
            return
        self.sent += 1
        self.bytes += size
        self.sent_by_topic[topic] += 1
        metrics.MESSAGES_SENT.labels(topic=topic).inc()
        metrics.BYTES_SENT.labels(topic=topic).inc(size)

    def poll(self) -> None:
        self.producer.poll(0)

    def flush(self, timeout_s: float) -> None:
        """Wait for every queued message's report; after ``timeout_s`` purge the rest as failed."""
        remaining = self.producer.flush(timeout_s)
        if remaining:
            log.warning("%d messages still undelivered after %.0f s; dropping them", remaining, timeout_s)
            self.producer.purge()
            self.producer.flush(5)  # purged messages report _PURGE_QUEUE/_PURGE_INFLIGHT: counted failed
