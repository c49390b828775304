"""The throughput contenders (issue 16): each reads the first ``count`` messages of one topic once.

Every contender returns a ``Timeline`` (items and process CPU time at each hand-over) and ends
on its own after ``count`` messages: tfio's ``KafkaDataset`` never does (``eof=False``), so the
Kafka readers get per-partition stop offsets. The two floors are the plainest tf.data programs
that decode the same messages: from memory, and from Kafka the way tensorflow-io's tutorial
reads it; our pipeline is measured against them at every partition count. Both readers of
``trainer.source.reader`` are contenders: tensorflow-io's (``tfio_source``, ``pipeline_live``)
and confluent-kafka's one consumer (``consumer_source``, ``pipeline_live_confluent``).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import tensorflow as tf
from confluent_kafka import Consumer, TopicPartition

from stream_trainer.config import Settings
from stream_trainer.ingest import pipeline
from stream_trainer.ingest.feeder import Feeder
from stream_trainer.ingest.fresh import FreshRows
from stream_trainer.ingest.inbox import END_PARTITION, Inbox
from stream_trainer.ingest.source import KafkaSource, source_class, staging_share
from stream_trainer.kafka import client_config
from stream_trainer.learn.batcher import Batch, Batcher, Replay
from stream_trainer.tfenv import CONFLUENT_KAFKA, TENSORFLOW_IO
from stream_trainer.threads import Threads
from stream_trainer.workbench.bench.config import BenchConfig
from stream_trainer.workbench.bench.sources import MemorySource, tfio_interleaved
from stream_trainer.workbench.bench.timing import BenchError, Timeline
from stream_trainer.workbench.bench.workload import Workload

STALL_S = 60.0  # a read that delivers nothing for this long has hung: fail instead of waiting forever


@dataclass(frozen=True)
class Context:
    settings: Settings
    bench: BenchConfig


def group_id(name: str) -> str:
    """A fresh consumer-group id per read: no run sees offsets another one committed."""
    return f"bench-{name}-{uuid.uuid4().hex[:8]}"


def _time_batches(ds: tf.data.Dataset, key: str | None = None) -> Timeline:
    """Iterate ``ds`` to its end, stamping every batch: of message sizes, or of decoded rows (``key``)."""
    tl = Timeline()
    for elem in ds:
        if key is None:
            tl.add(int(elem.shape[0]), int(tf.reduce_sum(elem)))
        else:
            tl.add(int(elem[key].shape[0]))
    return tl


# -- Kafka without decoding ------------------------------------------------------------------
def raw_consume(ctx: Context, w: Workload, count: int) -> Timeline:
    """confluent-kafka batch ``consume()`` over every partition; values are only counted."""
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
            tl.add(len(good), sum(len(m.value() or b"") for m in good))
    finally:
        consumer.close()
    return tl


def tfio_source(ctx: Context, w: Workload, count: int) -> Timeline:
    """tfio ``KafkaDataset`` per partition, interleaved, no decoding: what tensorflow-io reads at."""
    s = ctx.settings
    ds = tfio_interleaved(s.kafka, w.topic, w.stops(count), group_id("tfio"), s.trainer.source.poll_timeout_ms)
    # Batched like the raw consumer's hand-overs, so that Python's per-element iterator cost
    # (~50 us) does not cap the rate.
    return _time_batches(ds.map(tf.strings.length).batch(ctx.bench.consume_batch))


def consumer_source(ctx: Context, w: Workload, count: int) -> Timeline:
    """The confluent-kafka reader (``ConsumerSource``: one consumer -> intake -> inbox), no decoding.

    The inbox is drained as the decode pipeline would (everything arrived, up to a group); while
    it is empty this thread sleeps 0.5 ms, which the CPU per message includes."""
    s = ctx.settings
    inbox = Inbox(s.trainer.source.queue_capacity)
    stop = threading.Event()
    kafka_source(ctx, w, inbox, stop, "consumer", CONFLUENT_KAFKA).start(w.starts(), w.stops(count))
    tl = Timeline()
    last = time.monotonic()
    try:
        with tf.device("/CPU:0"):
            while True:
                if inbox.size() == 0:
                    if time.monotonic() - last > STALL_S:
                        msg = (f"the confluent-kafka reader handed on {tl.total} of {count}, then nothing for "
                               f"{STALL_S:.0f} s")
                        raise BenchError(msg)
                    time.sleep(0.0005)
                    continue
                values, partitions, _ = inbox.take_arrived(ctx.bench.consume_batch)
                last = time.monotonic()
                real = partitions != END_PARTITION
                tl.add(int(tf.reduce_sum(tf.cast(real, tf.int32))),
                       int(tf.reduce_sum(tf.strings.length(tf.boolean_mask(values, real)))))
                if not bool(tf.reduce_all(real)):
                    return tl
    finally:
        stop.set()


# -- the floors: a plain parallel map of decode_example ----------------------------------------
def _plain_map(ds: tf.data.Dataset, ctx: Context) -> tf.data.Dataset:
    p = ctx.settings.trainer.pipeline
    # The whole decoded row (image, mask, timestamp), as the trainer needs it: a map returning the
    # image alone would let graph optimisation drop the mask's decoding.
    return ds.map(lambda v: pipeline.decode_example(v, p.image_size),
                  num_parallel_calls=tf.data.AUTOTUNE).batch(p.batch_size)


def floor_memory(ctx: Context, w: Workload, count: int) -> Timeline:
    """``from_tensor_slices(values).map(decode_example, AUTOTUNE).batch(B)``: decoding alone."""
    return _time_batches(_plain_map(tf.data.Dataset.from_tensor_slices(w.values[:count]), ctx), "image")


def floor_live(ctx: Context, w: Workload, count: int) -> Timeline:
    """tfio per partition, interleaved, then the same plain map: the tfio tutorial's pattern."""
    s = ctx.settings
    raw = tfio_interleaved(s.kafka, w.topic, w.stops(count), group_id("floor"), s.trainer.source.poll_timeout_ms)
    return _time_batches(_plain_map(raw, ctx), "image")


# -- our pipeline: inbox -> decoded_groups -> Feeder -> FreshRows -> Batcher ------------------------
def fresh_capacity(ctx: Context) -> int:
    """The fresh-row buffer app.py sizes."""
    p = ctx.settings.trainer.pipeline
    return max(2 * p.batch_size, p.decode_group, p.shuffle_buffer)


def trainer_batches(ctx: Context, inbox: Inbox, starts: dict[int, int], launch: Callable[[], object],
                    on_batch: Callable[[Batch], None] | None = None, stop: threading.Event | None = None,
                    replay: Replay | None = None) -> Timeline:
    """Batches exactly as the trainer assembles them, from whatever fills ``inbox``.

    ``launch`` starts the filling (Kafka readers or ``MemorySource``) once the decode side is
    built; the read must be bounded (it ends with the inbox's end marker). ``on_batch`` gets
    every batch (the training contenders step on it); ``replay`` (default none) fills batches.
    """
    t = ctx.settings.trainer
    stop = stop or threading.Event()
    fresh = FreshRows(fresh_capacity(ctx))
    decoded = pipeline.decoded_groups(inbox, t.pipeline.image_size, t.pipeline.decode_group, t.pipeline.decode_threads)
    feeder = Feeder(decoded, fresh, starts, stop)
    batcher = Batcher(fresh, replay, t.pipeline, t.replay, t.pipeline.image_size)
    filler = launch()
    feeder.start()
    tl = Timeline()
    last = time.monotonic()
    try:
        while True:
            batch = batcher.next(0.25)
            if batch is None:
                failure = feeder.failure or getattr(filler, "failure", None)
                if failure is not None:
                    msg = f"the input failed: {failure!r}"
                    raise BenchError(msg)
                if feeder.exhausted.is_set() and len(fresh) == 0:
                    return tl
                if time.monotonic() - last > STALL_S:
                    msg = f"our pipeline delivered {tl.total} rows, then nothing for {STALL_S:.0f} s"
                    raise BenchError(msg)
                continue
            last = time.monotonic()
            if on_batch is not None:
                on_batch(batch)
            assert batch.rows is not None
            tl.add(batch.n_fresh, int(batch.rows.nbytes.sum()))
    finally:
        stop.set()


def kafka_source(ctx: Context, w: Workload, inbox: Inbox, stop: threading.Event, name: str,
                 reader: str = TENSORFLOW_IO) -> KafkaSource:
    """The trainer's source for ``reader`` on ``w.topic``; a failed reader resumes where it stopped."""
    s = ctx.settings
    group = s.trainer.pipeline.decode_group
    share = staging_share(s.trainer.source, group, len(w.starts()))
    return source_class(reader)(s.kafka, w.topic, inbox, s.trainer.source, group_id(name),
                                lambda _p, offset: offset, stop, Threads(), share=share, group=group)


def pipeline_memory(ctx: Context, w: Workload, count: int) -> Timeline:
    """Our decode path fed from memory: ``MemorySource`` puts the messages into the inbox."""
    inbox = Inbox(ctx.settings.trainer.source.queue_capacity)
    memory = MemorySource(inbox, w.per_partition(count))
    return trainer_batches(ctx, inbox, w.starts(), memory.start)


def pipeline_live(ctx: Context, w: Workload, count: int, reader: str = TENSORFLOW_IO) -> Timeline:
    """Our whole input path: ``reader``'s source with stop offsets -> the same decode path."""
    inbox = Inbox(ctx.settings.trainer.source.queue_capacity)
    stop = threading.Event()
    src = kafka_source(ctx, w, inbox, stop, "pipeline", reader)
    return trainer_batches(ctx, inbox, w.starts(), lambda: src.start(w.starts(), w.stops(count)), stop=stop)


def pipeline_live_confluent(ctx: Context, w: Workload, count: int) -> Timeline:
    """``pipeline_live`` with the confluent-kafka reader."""
    return pipeline_live(ctx, w, count, CONFLUENT_KAFKA)


@dataclass(frozen=True)
class Contender:
    key: str
    title: str
    unit: str
    run: Callable[[Context, Workload, int], Timeline]
    decodes: bool  # its timed window also leaves out the last two batches (a partial one waits)


CONTENDERS = [
    Contender("raw_consume", "raw consume (confluent-kafka consume(), bytes only)", "messages/s", raw_consume, False),
    Contender("tfio_source", "tfio source (KafkaDataset per partition, interleaved, no decoding)", "messages/s",
              tfio_source, False),
    Contender("consumer_source", "confluent-kafka reader (one consumer -> intake -> inbox, no decoding)",
              "messages/s", consumer_source, False),
    Contender("floor_memory", "plain map floor, from memory (from_tensor_slices.map(decode_example, AUTOTUNE))",
              "images/s", floor_memory, True),
    Contender("floor_live", "plain map floor, live (tfio per partition, interleaved, same map)", "images/s",
              floor_live, True),
    Contender("pipeline_memory", "our pipeline, from memory (inbox -> decoded_groups -> Feeder -> Batcher)",
              "images/s", pipeline_memory, True),
    Contender("pipeline_live", "our pipeline, live (KafkaSource readers -> same path)", "images/s",
              pipeline_live, True),
    Contender("pipeline_live_confluent", "our pipeline, live, confluent-kafka reader (one consumer -> same path)",
              "images/s", pipeline_live_confluent, True),
]
