"""tensorflow-io ``KafkaDataset`` per partition: the raw, unbounded message stream.

Why ``KafkaDataset`` with explicit ``topic:partition:offset`` and not ``KafkaGroupIODataset``:
the group dataset lets librdkafka auto-commit at fetch time, before a message is trained, so a
crash loses data. Here each partition starts exactly at the offset our checkpoint says, and
``message_offset=True`` hands every message's ``partition:offset`` to the training loop.

tfio bundles librdkafka 1.5.0; the bookkeeping it cannot do (commits, lag, metadata) lives in
``kafka.py`` with confluent-kafka.
"""

from __future__ import annotations

from collections.abc import Mapping

import tensorflow as tf
import tensorflow_io.kafka as tfio_kafka  # `import tensorflow_io` alone has no `.kafka`

from stream_trainer.config import KafkaConfig, SourceConfig

# tfio's consumer joins no group and must never commit: our checkpoint owns positions.
_TFIO_GLOBAL = ("enable.auto.commit=false", "enable.auto.offset.store=false", "api.version.request=true")
# librdkafka 1.5 understands only a subset of modern properties; pass through the ones both know.
_PASSTHROUGH_PREFIXES = ("security.protocol", "sasl.", "ssl.", "client.id", "socket.", "fetch.", "queued.")


def assigned_partitions(all_partitions: list[int], source: SourceConfig) -> list[int]:
    """The partitions this worker reads: the explicit list, else its share of ``all_partitions``.

    Scale-out splits partitions across tf.distribute workers; each worker gets every
    ``worker_count``-th partition starting at ``worker_index``.
    """
    if source.partitions:
        return sorted(p for p in source.partitions if p in all_partitions)
    return [p for p in all_partitions if p % source.worker_count == source.worker_index]


def tfio_config(kafka: KafkaConfig) -> list[str]:
    extra = [f"{k}={v}" for k, v in kafka.client.items() if k.startswith(_PASSTHROUGH_PREFIXES)]
    return [*_TFIO_GLOBAL, *extra]


def partition_reader(kafka: KafkaConfig, topic: str, poll_timeout_ms: int, group_id: str,  # noqa: ANN201
                     stop_offsets: Mapping[int, int] | None = None):
    """A function ``(partition, start_offset) -> Dataset`` of ``(key, value, partition, offset)``.

    It is meant for ``Dataset.interleave``: ``eof=False`` blocks inside C++ until a message
    comes, so one idle partition must not hold the others back (parallel, non-deterministic
    interleave). The poll timeout bounds how long one ``consume`` call blocks.

    ``stop_offsets`` (partition -> offset to stop before, for every partition read) bounds the
    read for benchmarks and tests: each partition ends after ``stop - start`` messages, so the
    topic must have no offset gaps (no transactions, no compaction) in that range. Why not
    ``.take(n)`` on the merged stream: tfio's reader loops in C++ without checking for
    cancellation, so destroying a parallel interleave whose workers wait on a drained partition
    hangs forever. Why not tfio's own ``topic:p:start:last`` limit: it reads nothing when
    ``start == last``, i.e. for a one-message range.
    """
    servers = kafka.bootstrap_servers
    config = tfio_config(kafka)
    stops = None
    if stop_offsets:
        stops = tf.constant([stop_offsets.get(p, 0) for p in range(max(stop_offsets) + 1)], tf.int64)

    def read(partition: tf.Tensor, start: tf.Tensor) -> tf.data.Dataset:
        spec = tf.strings.join([topic, tf.strings.as_string(partition), tf.strings.as_string(start), "-1"], ":")
        ds = tfio_kafka.KafkaDataset(
            tf.reshape(spec, [1]), servers=servers, group=group_id, eof=False, timeout=poll_timeout_ms,
            config_global=config, message_key=True, message_offset=True,
        )
        ds = ds.map(_split_position)
        if stops is not None:
            ds = ds.take(tf.maximum(tf.gather(stops, partition) - tf.cast(start, tf.int64), 0))
        return ds

    return read


def _split_position(value: tf.Tensor, key: tf.Tensor, position: tf.Tensor) -> dict[str, tf.Tensor]:
    # tfio yields (value, key, "partition:offset") when both message_key and message_offset are on.
    # decode_csv parses both numbers in one op: half the CPU of split + to_number (~40 us a message).
    partition, offset = tf.io.decode_csv(
        position, record_defaults=[tf.constant(0, tf.int32), tf.constant(0, tf.int64)], field_delim=":")
    return {"key": key, "value": value, "partition": partition, "offset": offset}


def kafka_stream(
    kafka: KafkaConfig, topic: str, starts: Mapping[int, int], poll_timeout_ms: int = 1000,
    group_id: str = "stream-trainer-tfio", stop_offsets: Mapping[int, int] | None = None,
) -> tf.data.Dataset:
    """All ``starts`` partitions as one stream of raw messages (no decoding).

    Unbounded unless ``stop_offsets`` is given (see ``partition_reader``).
    """
    partitions = sorted(starts)
    read = partition_reader(kafka, topic, poll_timeout_ms, group_id, stop_offsets)
    index = tf.data.Dataset.from_tensor_slices((
        tf.constant(partitions, tf.int32), tf.constant([starts[p] for p in partitions], tf.int64)))
    return index.interleave(read, cycle_length=len(partitions), block_length=1,
                            num_parallel_calls=len(partitions), deterministic=False)
