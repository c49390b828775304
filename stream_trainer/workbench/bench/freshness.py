"""Contender 8: produce->trained latency at a fixed share of training capacity.

A producer thread sends at ``load`` x the measured in-memory training rate, stamping every
message with its send time; the trainer's parts (pipeline from Kafka, ``Feeder``, compiled
step) train on them, and each message's latency is taken right after the step that trained it,
the moment ``TrainLoop._account`` observes ``stream_trainer_produce_to_train_latency_seconds``.
Direct per-message values, not histogram buckets, so the percentiles are exact.

At a rate well below capacity the shuffle window is what keeps a message waiting: it emits one
element per element it receives, so a message sits there for about ``shuffle_buffer / rate``
seconds. The run therefore uses its own, smaller ``bench.freshness.shuffle_buffer``; the report
states both buffers and what the trainer's buffer would cost at this rate.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from typing import Any

import numpy as np

from stream_trainer import pipeline, source
from stream_trainer.workbench.bench.contenders import Context, group_id
from stream_trainer.workbench.bench.timing import BenchError
from stream_trainer.workbench.bench.training import Trainer
from stream_trainer.workbench.bench.workload import PacedProducer, new_topic, stops_for
from stream_trainer.feeder import Feeder
from stream_trainer.kafka import Cluster
from stream_trainer.wire import PetRecord


def measure(ctx: Context, trainer: Trainer, cluster: Cluster, records: list[PetRecord],
            capacity_images_per_s: float) -> dict[str, Any]:
    """Run producer and trainer together; return latency percentiles (seconds) and the raw values."""
    f, t = ctx.bench.freshness, ctx.settings.trainer
    partitions = ctx.bench.partitions
    rate = f.load * capacity_images_per_s
    cfg = dataclasses.replace(t.pipeline, shuffle_buffer=f.shuffle_buffer)
    # After the window, keep producing until the window's last messages have left the shuffle
    # buffer and a batch: the final drain of a bounded read would flatter them.
    tail_s = max(2.0, 2 * (f.shuffle_buffer + cfg.batch_size) / rate)
    total = max(math.ceil(rate * (f.warmup_s + f.seconds + tail_s)), 2 * partitions)
    topic = new_topic(cluster, "bench-fresh", partitions)
    stops = stops_for(total, partitions)

    def make_dataset():  # noqa: ANN202
        read = source.partition_reader(ctx.settings.kafka, topic, t.source.poll_timeout_ms, group_id("fresh"),
                                       stop_offsets=stops)
        decoded = pipeline.decoded_partitions(read, dict.fromkeys(range(partitions), 0), t.pipeline.image_size)
        return pipeline.train_batches(decoded, cfg)

    stop = threading.Event()
    feeder = Feeder(make_dataset, stop).start()
    producer = PacedProducer(ctx.settings.kafka, topic, partitions, records, rate, total)
    time.sleep(1.0)  # the readers connect and wait at offset 0 before the first message is sent
    start_ms = time.time() * 1000.0
    producer.start()
    trained: list[tuple[float, float]] = []  # (produce_ts_ms, latency_s)
    deadline = time.monotonic() + total / rate + 120.0
    try:
        while True:
            batch = feeder.get(timeout_s=0.25)
            if batch is None:
                if feeder.exhausted.is_set():
                    break
                if producer.error or time.monotonic() > deadline:
                    msg = (f"freshness run stalled: {producer.sent}/{total} sent, {len(trained)} trained"
                           f"{'; ' + producer.error if producer.error else ''}")
                    raise BenchError(msg)
                continue
            float(trainer.step(batch["image"], batch["mask"]))
            now_ms = time.time() * 1000.0
            trained.extend((ts, (now_ms - ts) / 1000.0) for ts in batch["produce_ts_ms"].numpy().tolist())
    finally:
        stop.set()
        producer.stop()
        cluster.admin.delete_topics([topic])

    lo, hi = start_ms + f.warmup_s * 1000.0, start_ms + (f.warmup_s + f.seconds) * 1000.0
    window = np.array([lat for ts, lat in trained if lo <= ts < hi])
    produced_in_window = sum(1 for i in range(total) if lo <= start_ms + 1000.0 * i / rate < hi)
    if window.size == 0:
        msg = "no message produced inside the freshness window was trained; raise bench.freshness.seconds"
        raise BenchError(msg)
    p50, p95, p99 = (float(x) for x in np.percentile(window, [50, 95, 99]))
    return {
        "rate_messages_per_s": rate,
        "load": f.load,
        "capacity_images_per_s": capacity_images_per_s,
        "shuffle_buffer": f.shuffle_buffer,
        "trainer_shuffle_buffer": t.pipeline.shuffle_buffer,
        "trainer_shuffle_wait_estimate_s": t.pipeline.shuffle_buffer / rate,
        "batch_size": cfg.batch_size,
        "window_s": f.seconds,
        "counted": int(window.size),
        "produced_in_window_approx": produced_in_window,
        "p50_s": p50, "p95_s": p95, "p99_s": p99,
        "mean_s": float(window.mean()), "max_s": float(window.max()),
        "latencies_s": [round(float(x), 4) for x in window],
    }
