"""The throughput contenders: each reads the first ``count`` messages of the workload once.

Every contender returns a ``Timeline``; ``CONTENDERS`` says how much of its head and tail the
rate skips. All of them end on their own after ``count`` messages: tfio's ``KafkaDataset``
never does (``eof=False``), so the Kafka readers get per-partition stop offsets.
"""

from __future__ import annotations

import io
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import tensorflow as tf
from confluent_kafka import Consumer, TopicPartition
from PIL import Image

from stream_trainer import pipeline, source, wire
from stream_trainer.workbench.bench.config import BenchConfig
from stream_trainer.workbench.bench.timing import BenchError, Timeline
from stream_trainer.workbench.bench.workload import Workload
from stream_trainer.config import Settings
from stream_trainer.kafka import client_config

STALL_S = 60.0  # a read that delivers nothing for this long has hung: fail instead of waiting forever


@dataclass(frozen=True)
class Context:
    settings: Settings
    bench: BenchConfig
    workload: Workload


def group_id(name: str) -> str:
    """A fresh consumer-group id per read: no run sees offsets another one committed."""
    return f"bench-{name}-{uuid.uuid4().hex[:8]}"


def _time_batches(ds: tf.data.Dataset, count_key: str | None, bytes_key: str | None) -> Timeline:
    """Iterate ``ds`` to its end, stamping every element (a batch) with its item and byte counts."""
    tl = Timeline()
    for elem in ds:
        items = int(tf.shape(elem[count_key] if count_key else elem)[0])
        nbytes = int(tf.reduce_sum(elem[bytes_key])) if bytes_key else 0
        tl.add(items, nbytes)
    return tl


# -- 1. raw consume limit ----------------------------------------------------------------------
def raw_consume(ctx: Context, count: int) -> Timeline:
    """confluent-kafka batch ``consume()`` over every partition; values are only counted."""
    w = ctx.workload
    consumer = Consumer(client_config(ctx.settings.kafka, **{
        "group.id": group_id("raw"), "enable.auto.commit": False, "enable.partition.eof": False}))
    consumer.assign([TopicPartition(w.topic, p, 0) for p in range(w.partitions)])
    tl = Timeline()
    last = time.monotonic()
    try:
        while tl.total < count:
            msgs = consumer.consume(num_messages=min(ctx.bench.consume_batch, count - tl.total), timeout=1.0)
            good = [m for m in msgs if m.error() is None]
            if not good:
                if time.monotonic() - last > STALL_S:
                    msg = f"raw consume read {tl.total} of {count} messages, then nothing for {STALL_S:.0f} s"
                    raise BenchError(msg)
                continue
            last = time.monotonic()
            tl.add(len(good), sum(len(m.value()) for m in good))
    finally:
        consumer.close()
    return tl


# -- 2. tfio source ------------------------------------------------------------------------------
def tfio_source(ctx: Context, count: int) -> Timeline:
    """``source.kafka_stream``: tfio ``KafkaDataset`` per partition, interleaved, no decoding."""
    w, s = ctx.workload, ctx.settings
    ds = source.kafka_stream(s.kafka, w.topic, w.starts(), s.trainer.source.poll_timeout_ms, group_id("tfio"),
                             stop_offsets=w.stops(count))
    # Batched like the raw consumer's hand-overs, so that Python's per-element iterator cost
    # (~50 us) does not cap the rate.
    sizes = ds.map(lambda m: tf.strings.length(m["value"])).batch(ctx.bench.consume_batch)
    tl = Timeline()
    for batch in sizes:
        tl.add(int(batch.shape[0]), int(tf.reduce_sum(batch)))
    return tl


# -- 3. our pipeline ---------------------------------------------------------------------------
def our_pipeline(ctx: Context, count: int) -> Timeline:
    """Exactly what ``app.py`` builds: tfio per partition -> decoded_partitions -> train_batches."""
    w, t = ctx.workload, ctx.settings.trainer
    read = source.partition_reader(ctx.settings.kafka, w.topic, t.source.poll_timeout_ms, group_id("pipeline"),
                                   stop_offsets=w.stops(count))
    decoded = pipeline.decoded_partitions(read, w.starts(), t.pipeline.image_size)
    return _time_batches(pipeline.train_batches(decoded, t.pipeline), "image", "nbytes")


# -- 4. in-memory decode limit -----------------------------------------------------------------
def memory_reader(w: Workload, count: int) -> pipeline.RawReader:
    """A ``RawReader`` over the workload's serialized Examples held in memory (``from_tensor_slices``).

    Same element structure and per-partition order as the Kafka reader, so everything after it
    is identical.
    """
    stops = w.stops(count)
    per_part = [w.values[p::w.partitions][:stops[p]] for p in range(w.partitions)]
    begins = np.cumsum([0] + [len(v) for v in per_part])[:-1]
    flat = [v for vals in per_part for v in vals]
    all_msgs = tf.data.Dataset.from_tensor_slices(tf.constant(flat, tf.string))
    begin_t = tf.constant(begins, tf.int64)
    count_t = tf.constant([len(v) for v in per_part], tf.int64)

    def read(partition: tf.Tensor, start: tf.Tensor) -> tf.data.Dataset:
        n = tf.gather(count_t, partition)
        values = all_msgs.skip(tf.gather(begin_t, partition)).take(n)
        offsets = tf.data.Dataset.range(n).map(lambda i: tf.cast(start, tf.int64) + i)
        return tf.data.Dataset.zip((values, offsets)).map(
            lambda v, o: {"key": tf.constant(""), "value": v, "partition": partition, "offset": o})

    return read


def in_memory(ctx: Context, count: int) -> Timeline:
    """The identical preprocessing fed from memory: the ceiling decoding sets on this machine."""
    w, t = ctx.workload, ctx.settings.trainer
    decoded = pipeline.decoded_partitions(memory_reader(w, count), w.starts(), t.pipeline.image_size)
    return _time_batches(pipeline.train_batches(decoded, t.pipeline), "image", "nbytes")


# -- 5. naive loop -------------------------------------------------------------------------------
def naive_loop(ctx: Context, count: int) -> Timeline:
    """What people write first: ``poll()`` per message, PIL decode in Python, ``from_generator``, batch."""
    w, p = ctx.workload, ctx.settings.trainer.pipeline
    size = p.image_size

    def examples() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        consumer = Consumer(client_config(ctx.settings.kafka, **{
            "group.id": group_id("naive"), "auto.offset.reset": "earliest", "enable.auto.commit": False}))
        consumer.subscribe([w.topic])
        seen, last = 0, time.monotonic()
        try:
            while seen < count:
                msg = consumer.poll(1.0)
                if msg is None or msg.error() is not None:
                    if time.monotonic() - last > STALL_S:
                        text = f"naive loop read {seen} of {count} messages, then nothing for {STALL_S:.0f} s"
                        raise BenchError(text)
                    continue
                seen, last = seen + 1, time.monotonic()
                feature = tf.train.Example.FromString(msg.value()).features.feature
                image = Image.open(io.BytesIO(feature[wire.IMAGE_KEY].bytes_list.value[0])).convert("RGB")
                mask = Image.open(io.BytesIO(feature[wire.MASK_KEY].bytes_list.value[0]))
                x = np.asarray(image.resize((size, size), Image.BILINEAR), np.float32) / 255.0
                y = np.asarray(mask.resize((size, size), Image.NEAREST), np.uint8)[..., None] - wire.PET
                if random.random() < 0.5:
                    x, y = x[:, ::-1], y[:, ::-1]
                yield x, y
        finally:
            consumer.close()

    ds = tf.data.Dataset.from_generator(examples, output_signature=(
        tf.TensorSpec((size, size, 3), tf.float32), tf.TensorSpec((size, size, 1), tf.uint8)))
    tl = Timeline()
    for images, _masks in ds.batch(p.batch_size):
        tl.add(int(images.shape[0]))
    return tl


# -- 6. tfio tutorial pattern --------------------------------------------------------------------
def tfio_tutorial(ctx: Context, count: int) -> Timeline:
    """``KafkaGroupIODataset`` as tensorflow.org's Kafka tutorial sets it up, then our decode and batching."""
    import tensorflow_io as tfio  # noqa: PLC0415 - only this contender needs the experimental API

    w, p = ctx.workload, ctx.settings.trainer.pipeline
    raw = tfio.experimental.streaming.KafkaGroupIODataset(
        topics=[w.topic], group_id=group_id("tutorial"), servers=ctx.settings.kafka.bootstrap_servers,
        # The tutorial's settings, except a 1 s poll timeout instead of 10 s: a poll that finds the
        # topic drained then ends the run 9 s sooner; it changes nothing while messages flow.
        stream_timeout=10000, message_poll_timeout=1000, configuration=[
            "session.timeout.ms=7000", "max.poll.interval.ms=8000", "auto.offset.reset=earliest"])
    # take() right at the source: the group reader is synchronous, so stopping it cannot hang.
    decoded = raw.take(count).map(lambda message, _key: pipeline.decode_example(message, p.image_size),
                                  num_parallel_calls=tf.data.AUTOTUNE)
    try:
        return _time_batches(pipeline.train_batches(decoded, p), "image", None)
    finally:
        # The group consumer lives in a TF resource that nothing else ever frees: it would stay in
        # the group, heartbeating, until the process exits. Left alive, deleting the topic or
        # stopping the broker later crashed this process (SIGSEGV inside tfio's librdkafka 1.5).
        tf.raw_ops.DestroyResourceOp(resource=raw._resource, ignore_lookup_error=True)  # noqa: SLF001


@dataclass(frozen=True)
class Contender:
    key: str
    title: str
    unit: str
    run: Callable[[Context, int], Timeline]
    shuffled: bool  # its timed window skips a shuffle buffer's fill and drain


CONTENDERS = [
    Contender("raw_consume", "raw consume limit (confluent-kafka consume(), bytes only)", "messages/s",
              raw_consume, False),
    Contender("tfio_source", "tfio source (KafkaDataset per partition, no decoding)", "messages/s",
              tfio_source, False),
    Contender("pipeline", "our pipeline (Kafka -> decode -> resize -> flip -> batch -> prefetch)", "images/s",
              our_pipeline, True),
    Contender("in_memory", "in-memory decode limit (same preprocessing, from_tensor_slices)", "images/s",
              in_memory, True),
    Contender("naive", "naive loop (poll() per message, PIL, from_generator)", "images/s", naive_loop, False),
    Contender("tfio_tutorial", "tfio tutorial pattern (KafkaGroupIODataset + same map)", "images/s",
              tfio_tutorial, True),
]
