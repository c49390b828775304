"""What Kafka and the trainers' logs say happened: the topic's offsets, the dead letters, the trained log.

The soak's own reads use confluent-kafka with ``isolation.level=read_committed`` (librdkafka's
default, and the trainer's): a transaction's commit marker takes an offset that no consumer ever
receives, so "every offset below the high watermark" is not what must be trained; the offsets a
consumer receives are.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

Offset = tuple[int, int]


def _consumer(bootstrap: str) -> Any:
    from confluent_kafka import Consumer

    return Consumer({"bootstrap.servers": bootstrap, "group.id": f"soak-reader-{uuid.uuid4().hex[:8]}",
                     "enable.auto.commit": False, "enable.partition.eof": True, "isolation.level": "read_committed",
                     "log_level": 0})


def read_topic(bootstrap: str, topic: str, timeout_s: float = 120.0) -> list[Any]:
    """Every message of every partition of ``topic`` (confluent-kafka ``Message`` objects).

    Raises ``TimeoutError`` when a partition's end is not reached in time: a partial read would
    show up as skipped offsets.
    """
    from confluent_kafka import KafkaError, TopicPartition

    consumer = _consumer(bootstrap)
    out: list[Any] = []
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=30).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])  # 0: from the log start
        waiting = set(partitions)
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
            if high <= low:
                waiting.discard(p)
        deadline = time.monotonic() + timeout_s
        while waiting:
            if time.monotonic() > deadline:
                msg = f"reading {topic}: partitions {sorted(waiting)} not read to their end in {timeout_s:.0f} s"
                raise TimeoutError(msg)
            msg_ = consumer.poll(0.5)
            if msg_ is None:
                continue
            if msg_.error() is not None:
                if msg_.error().code() == KafkaError._PARTITION_EOF:
                    waiting.discard(msg_.partition())
                continue
            out.append(msg_)
    finally:
        consumer.close()
    return out


def topic_offsets(bootstrap: str, topic: str) -> set[Offset]:
    """(partition, offset) of every message a read_committed consumer receives from ``topic``."""
    return {(m.partition(), m.offset()) for m in read_topic(bootstrap, topic)}


def dead_letters(bootstrap: str, topic: str, source_topic: str) -> dict[Offset, str]:
    """(partition, offset) of ``source_topic`` -> reason, for every letter in the dead-letter ``topic``."""
    out: dict[Offset, str] = {}
    for msg in read_topic(bootstrap, topic, timeout_s=60):
        headers = {k: v.decode() for k, v in msg.headers() or []}
        if headers.get("dlq.topic", source_topic) == source_topic and "dlq.offset" in headers:
            out[(int(headers["dlq.partition"]), int(headers["dlq.offset"]))] = headers.get("dlq.reason", "")
    return out


def trained(paths: Iterable[Path]) -> Counter[Offset]:
    """How many times each (partition, offset) went through a training step, over every log.

    Lines are ``partition offset step``; a half-written last line (SIGKILL) is ignored, and each
    process writes its own file, so a torn line never merges with the next process's first.
    """
    counts: Counter[Offset] = Counter()
    for path in paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 3 and all(p.isdigit() for p in parts):
                counts[(int(parts[0]), int(parts[1]))] += 1
    return counts
