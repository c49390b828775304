"""The messages every contender reads: synthetic pets, encoded once, produced into fresh topics.

Messages go round robin over the partitions with explicit partition numbers, so the count in
each partition is known without asking the broker and every bounded read can stop exactly
at the end (tfio's reader never ends on its own). The same encoded bytes go into one topic per
partition count, so a 1-, 4- and 16-partition read decode identical messages. The freshness
run reuses the same images, re-encoded with the current time as ``produce_ts_ms``, at a fixed
rate.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from confluent_kafka import Producer

from producer.send import RateLimiter
from producer.sources.synthetic import make_record
from stream_trainer import wire
from stream_trainer.config import KafkaConfig
from stream_trainer.errors import BrokerUnavailableError
from stream_trainer.kafka import Cluster, client_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Workload:
    """A topic holding ``len(values)`` messages; message ``i`` is in partition ``i % partitions``."""

    topic: str
    partitions: int
    values: list[bytes]  # in produce order, for the in-memory contenders

    @property
    def mean_bytes(self) -> float:
        return sum(map(len, self.values)) / len(self.values)

    def starts(self) -> dict[int, int]:
        return dict.fromkeys(range(self.partitions), 0)

    def per_partition(self, count: int) -> dict[int, list[bytes]]:
        """The first ``count`` messages as each partition holds them, in offset order."""
        return {p: self.values[p:count:self.partitions] for p in range(self.partitions)}

    def stops(self, count: int) -> dict[int, int]:
        """Per partition, the offset to stop before so that exactly the first ``count`` messages are read."""
        return stops_for(count, self.partitions)


def stops_for(count: int, partitions: int) -> dict[int, int]:
    """How many of the first ``count`` round-robin messages each partition holds."""
    return {p: (count - p + partitions - 1) // partitions for p in range(partitions)}


def make_records(count: int, px: int, seed: int) -> list[wire.PetRecord]:
    """``count`` deterministic synthetic pets, ``px`` pixels square (320 px: ~54 KB messages)."""
    return [make_record(i, seed, px, px, eval_fraction=0.0) for i in range(count)]


def new_topic(cluster: Cluster, prefix: str, partitions: int) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    cluster.ensure_topics({name: partitions})
    return name


def _producer(kafka: KafkaConfig) -> Producer:
    return Producer(client_config(kafka, **{"linger.ms": 5, "acks": "all", "enable.idempotence": True,
                                            "message.max.bytes": 2_000_000}))


def encode_all(records: list[wire.PetRecord]) -> list[bytes]:
    now_ms = int(time.time() * 1000)
    return [wire.encode(r, now_ms) for r in records]


def produce_all(cluster: Cluster, records: list[wire.PetRecord], values: list[bytes], partitions: int,
                prefix: str = "bench", spread: Sequence[int] | None = None) -> Workload:
    """Create a topic and write every value into it, round robin or into partition ``spread[i]``
    (message ``i`` has the key of ``records[i % len(records)]``); wait for every ack."""
    topic = new_topic(cluster, prefix, partitions)
    producer = _producer(cluster.kafka)
    failures: list[str] = []

    def on_delivery(err: object, _msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    for i, value in enumerate(values):
        record = records[i % len(records)]
        while True:
            try:
                producer.produce(topic, value=value, key=record.image_id.encode(),
                                 partition=i % partitions if spread is None else spread[i],
                                 on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
    left = producer.flush(60)
    if left or failures:
        msg = (f"producing the benchmark messages to {cluster.kafka.bootstrap_servers} failed "
               f"({left} undelivered, errors: {sorted(set(failures))[:3]}); is the broker healthy?")
        raise BrokerUnavailableError(msg)
    return Workload(topic, partitions, values)


class PacedProducer:
    """A thread that sends ``count`` messages at ``rate``/s, stamping each with the send time."""

    def __init__(self, kafka: KafkaConfig, topic: str, partitions: int, records: list[wire.PetRecord],
                 rate: float, count: int) -> None:
        self.topic = topic
        self.partitions = partitions
        self.records = records
        self.rate = rate
        self.count = count
        self.sent = 0
        self.error = ""
        self._producer = _producer(kafka)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-producer", daemon=True)

    def start(self) -> PacedProducer:
        self._thread.start()
        return self

    def _run(self) -> None:
        limiter = RateLimiter(self.rate)
        for i in range(self.count):
            if not limiter.wait(self._stop):
                break
            record = self.records[i % len(self.records)]
            # Stamped right before the send: latency is measured from here to the trained step.
            value = wire.encode(record, int(time.time() * 1000))
            try:
                self._producer.produce(self.topic, value=value, key=record.image_id.encode(),
                                       partition=i % self.partitions)
            except BufferError as exc:
                self.error = f"producer queue full at a paced {self.rate:.1f} msg/s: {exc}"
                break
            self._producer.poll(0)
            self.sent += 1
        self._producer.flush(30)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)
