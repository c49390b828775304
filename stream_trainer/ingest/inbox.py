"""The inbox: raw messages read from Kafka, waiting to be decoded.

A bounded TensorFlow FIFO queue of ``(value, partition, offset)`` sits between the Kafka readers
(``reader.py``, one thread per partition, whose messages the intake, ``intake.py``, hands over
fairly, a share per partition) and the decode pipeline (``pipeline.py``). It exists for three
reasons:

* **Errors stay where they belong.** The decode pipeline drops malformed messages with
  ``ignore_errors``, which would also swallow a failure of the Kafka reader if the reader were
  upstream of it in the same tf.data graph. Here a reader fails in its own thread, visibly.
* **"What has arrived" is one operation.** ``take_arrived`` dequeues everything waiting (up to a
  limit), so the decoder works on whatever arrived, never waiting for traffic that may never come.
* **Back pressure.** When training falls behind, the queue fills, the intake's shares fill, the
  readers block and stop fetching (librdkafka's read-ahead is bounded too): the backlog stays in
  Kafka (as consumer lag), not in memory.

Per partition, messages enter in offset order and leave in the same order.
"""

from __future__ import annotations

import tensorflow as tf

RAW_DTYPES = (tf.string, tf.int32, tf.int64)
# A message with this partition marks the end of a bounded read (benchmarks, tests).
END_PARTITION = -1


class Inbox:
    """A bounded queue of raw messages; every operation is a TensorFlow op (usable in tf.data)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.queue = tf.queue.FIFOQueue(capacity, RAW_DTYPES, shapes=[[], [], []], name="inbox")

    def put(self, value: tf.Tensor, partition: tf.Tensor, offset: tf.Tensor) -> tf.Operation:
        """Blocks while the inbox is full."""
        return self.queue.enqueue([value, partition, offset])

    def put_end(self) -> None:
        """Tell the decoder that a bounded read is complete (eager)."""
        self.queue.enqueue([tf.constant(b""), tf.constant(END_PARTITION, tf.int32), tf.constant(0, tf.int64)])

    def take_arrived(self, limit: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """Everything waiting, up to ``limit`` messages; blocks only while nothing is waiting."""
        count = tf.maximum(1, tf.minimum(self.queue.size(), limit))
        values, partitions, offsets = self.queue.dequeue_many(count)
        return values, partitions, offsets

    def size(self) -> int:
        return int(self.queue.size())
