"""Produce->trained latency at a fixed share of training capacity, with the trainer's default batching.

A producer thread sends at ``load`` x the measured in-memory training rate, stamping every
message with its send time. The trainer's parts train on them as ``TrainLoop`` does: the
``KafkaSource`` readers, ``decoded_groups``, the ``Feeder``, the ``Batcher`` with the
configured ``max_batch_wait_ms`` and ``shuffle_buffer``, the replay store as configured filling
every batch, the compiled step, and ``replay.add`` of the fresh rows after it. Each message's
latency is taken right after the step that trained it, where ``Accountant.trained`` observes
``stream_trainer_produce_to_train_latency_seconds``: per-message values, so exact percentiles.
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

import numpy as np

from stream_trainer.ingest.inbox import Inbox
from stream_trainer.kafka import Cluster
from stream_trainer.learn.batcher import Batch
from stream_trainer.learn.replay import ReplayStore
from stream_trainer.wire import PetRecord
from stream_trainer.workbench.bench.contenders import Context, kafka_source, trainer_batches
from stream_trainer.workbench.bench.timing import BenchError
from stream_trainer.workbench.bench.training import Trainer
from stream_trainer.workbench.bench.workload import PacedProducer, Workload, new_topic, stops_for


def replay_store(ctx: Context) -> ReplayStore | None:
    """The store ``app.run_trainer`` builds from ``trainer.replay`` (None when it is off)."""
    t = ctx.settings.trainer
    if t.replay.size_mib <= 0:
        return None
    return ReplayStore(int(t.replay.size_mib * 2**20), t.pipeline.image_size, t.replay.seed,
                       t.replay.policy)  # type: ignore[arg-type]


def measure(ctx: Context, trainer: Trainer, cluster: Cluster, records: list[PetRecord],
            capacity_images_per_s: float) -> dict[str, Any]:
    """Run producer and trainer together; return latency percentiles (seconds) and the raw values."""
    f, t = ctx.bench.freshness, ctx.settings.trainer
    partitions = ctx.bench.partitions
    rate = f.load * capacity_images_per_s
    # After the window, keep producing for a while: the window's last messages must not be
    # flattered by the end of the stream (a partial batch trained without waiting for more).
    tail_s = max(1.0, 2 * (t.pipeline.batch_size / rate + t.pipeline.max_batch_wait_ms / 1000.0))
    total = max(math.ceil(rate * (f.warmup_s + f.seconds + tail_s)), 2 * partitions)
    topic = new_topic(cluster, "bench-fresh", partitions)
    w = Workload(topic, partitions, [])
    replay = replay_store(ctx)
    trained: list[tuple[float, float]] = []  # (produce_ts_ms, latency_s)
    rows_per_step: list[tuple[int, int]] = []  # (fresh, replayed)

    def train(batch: Batch) -> None:
        trainer.step(batch)
        now_ms = time.time() * 1000.0
        assert batch.rows is not None
        trained.extend((ts, (now_ms - ts) / 1000.0) for ts in batch.rows.produce_ts_ms.tolist())
        rows_per_step.append((batch.n_fresh, batch.n_rows - batch.n_fresh))
        if replay is not None:  # as Accountant.trained does after every step
            replay.add(batch.rows.image, batch.rows.mask, batch.rows.partition, batch.rows.offset)

    inbox = Inbox(t.source.queue_capacity)
    stop = threading.Event()
    src = kafka_source(ctx, w, inbox, stop, "fresh")
    producer = PacedProducer(ctx.settings.kafka, topic, partitions, records, rate, total)

    started_ms: list[float] = []

    def launch() -> object:
        # The readers connect while the first messages are sent: warmup_s leaves those out.
        src.start(w.starts(), stops_for(total, partitions))
        started_ms.append(time.time() * 1000.0)
        producer.start()
        return src

    try:
        trainer_batches(ctx, inbox, w.starts(), launch, train, stop, replay)
    finally:
        producer.stop()
        cluster.admin.delete_topics([topic])
    if producer.error:
        msg = f"the freshness producer failed: {producer.error}"
        raise BenchError(msg)
    start_ms = started_ms[0]
    lo, hi = start_ms + f.warmup_s * 1000.0, start_ms + (f.warmup_s + f.seconds) * 1000.0
    window = np.array([lat for ts, lat in trained if lo <= ts < hi])
    if window.size == 0:
        msg = "no message produced inside the freshness window was trained; raise bench.freshness.seconds"
        raise BenchError(msg)
    p50, p95, p99 = (float(x) for x in np.percentile(window, [50, 95, 99]))
    fresh_rows = np.array([r[0] for r in rows_per_step])
    return {
        "rate_messages_per_s": rate,
        "load": f.load,
        "capacity_images_per_s": capacity_images_per_s,
        "batch_size": t.pipeline.batch_size,
        "max_batch_wait_ms": t.pipeline.max_batch_wait_ms,
        "shuffle_buffer": t.pipeline.shuffle_buffer,
        "replay": {"size_mib": t.replay.size_mib, "policy": t.replay.policy, "fraction": t.replay.fraction,
                   "members_at_end": len(replay) if replay is not None else 0},
        "steps": len(rows_per_step),
        "mean_fresh_rows_per_step": float(fresh_rows.mean()) if fresh_rows.size else 0.0,
        "mean_replayed_rows_per_step": float(np.mean([r[1] for r in rows_per_step])) if rows_per_step else 0.0,
        "window_s": f.seconds,
        "counted": int(window.size),
        "p50_s": p50, "p95_s": p95, "p99_s": p99,
        "mean_s": float(window.mean()), "max_s": float(window.max()),
        "latencies_s": [round(float(x), 4) for x in window],
    }
