"""Raw-message sources the contenders share: the same messages from memory and from Kafka.

``MemorySource`` puts messages into an ``Inbox`` the way ``supervisor.KafkaSource``'s intake does
(one thread per partition, offset order, chunks of 64, then the end marker), so that "our
pipeline from memory" runs the trainer's decode path with Kafka taken out and nothing else
changed. ``tfio_interleaved`` is the reading pattern of tensorflow-io's Kafka tutorial: one
``KafkaDataset`` per partition, interleaved in one tf.data graph, bounded per partition.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

import tensorflow as tf

from stream_trainer.config import KafkaConfig
from stream_trainer.ingest import source
from stream_trainer.ingest.inbox import Inbox

# As the intake's pump (intake.py): at most one decode group per hand-over.
CHUNK = 64


class MemorySource:
    """Each partition's messages, enqueued from a thread of its own; the end marker after the last."""

    def __init__(self, inbox: Inbox, per_partition: Mapping[int, list[bytes]], chunk: int = CHUNK) -> None:
        self.inbox = inbox
        # Tensors built here, before any clock runs: the threads only enqueue.
        self._chunks = {p: [(tf.constant(values[i:i + chunk], tf.string),
                             tf.fill([len(values[i:i + chunk])], tf.constant(p, tf.int32)),
                             tf.range(i, i + len(values[i:i + chunk]), dtype=tf.int64))
                            for i in range(0, len(values), chunk)]
                        for p, values in per_partition.items()}
        self._left = len(self._chunks)
        self._lock = threading.Lock()
        self.failure: BaseException | None = None

    def start(self) -> MemorySource:
        for p in self._chunks:
            threading.Thread(target=self._run, args=(p,), name=f"memory-reader-{p}", daemon=True).start()
        return self

    def _run(self, partition: int) -> None:
        try:
            for chunk in self._chunks[partition]:
                self.inbox.queue.enqueue_many(chunk)  # blocks while the inbox is full, as a reader does
        except tf.errors.OpError as exc:
            self.failure = exc
            return
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self.inbox.put_end()


def tfio_interleaved(kafka: KafkaConfig, topic: str, stops: Mapping[int, int], group_id: str,
                     poll_timeout_ms: int) -> tf.data.Dataset:
    """Message values of partitions ``0..len(stops)-1`` from offset 0 up to ``stops``, interleaved.

    Bounded per partition with ``take``, the only bound tfio's reader honours without hanging:
    with ``eof=False`` it blocks in C++ on a drained partition and ignores cancellation.

    Each partition's consumer gets the librdkafka properties of the trainer's reader of one of
    ``len(stops)`` partitions, its share of the worker's read-ahead included: with 2 cores busy
    decoding, how fast four partitions were read depended on it (a floor given 32 MiB per
    partition against our readers' 8 compared read-aheads, not decode paths; docs/benchmarks.md).
    """
    import tensorflow_io.kafka as tfio_kafka  # here: a stack without tensorflow-io still runs the rest

    servers, cfg = kafka.bootstrap_servers, source.tfio_config(kafka, len(stops))
    counts = tf.constant([stops[p] for p in range(len(stops))], tf.int64)

    def read(partition: tf.Tensor) -> tf.data.Dataset:
        spec = tf.strings.join([topic, tf.strings.as_string(partition), "0", "-1"], ":")
        ds = tfio_kafka.KafkaDataset(tf.reshape(spec, [1]), servers=servers, group=group_id, eof=False,
                                     timeout=poll_timeout_ms, config_global=cfg)
        return ds.take(tf.gather(counts, partition))

    partitions = tf.data.Dataset.range(len(stops))
    return partitions.interleave(read, cycle_length=len(stops), block_length=1,
                                 num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
