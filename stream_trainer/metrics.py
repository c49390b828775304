"""Every Prometheus metric the trainer exports, defined once.

Conventions: base units (seconds, bytes), ``_total`` counters, ``_seconds`` histograms.
Labels are bounded: topic, partition, a fixed set of reasons, ``part`` (fresh | replay) and
``worker``. The ``worker`` label (the process's index in ``trainer.cluster``) is added to every
sample at exposition time, the ``process_*`` and ``python_*`` collectors' included, so that the
workers of one job can be told apart on one dashboard.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

REGISTRY = CollectorRegistry()
for _collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
    REGISTRY.register(_collector)

# Step times on 2 CPU cores run from ~50 ms (tiny test models) to seconds (wide U-Nets).
_STEP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Input wait is ~0 when the pipeline keeps up; the tail shows stalls and broker outages.
_WAIT_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)
# Produce->trained latency: the batch wait plus queueing, normally well under a few seconds.
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
# A vote among workers on one host takes ~1 ms; across hosts, network round trips.
_COLLECTIVE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0)

MESSAGES_CONSUMED = Counter(
    "stream_trainer_messages_consumed_total", "Messages read from Kafka and handled (trained or dead-lettered).",
    ["topic"], registry=REGISTRY)
BYTES_CONSUMED = Counter(
    "stream_trainer_bytes_consumed_total", "Bytes of message values trained on.", ["topic"], registry=REGISTRY)
IMAGES_TRAINED = Counter(
    "stream_trainer_images_trained_total", "Fresh images (first time seen) that went through a training step.",
    registry=REGISTRY)
IMAGES_REPLAYED = Counter(
    "stream_trainer_images_replayed_total", "Rows drawn from the replay store into training steps.",
    registry=REGISTRY)
STEPS = Counter("stream_trainer_steps_total", "Training steps run.", registry=REGISTRY)
IDLE_STEPS = Counter(
    "stream_trainer_idle_steps_total",
    "Steps this worker joined without a row of its own (zero-weight rows; multi-worker jobs).", registry=REGISTRY)
SKIPPED_STEPS = Counter(
    "stream_trainer_skipped_steps_total", "Votes in which no worker had data: no step, no optimizer update.",
    registry=REGISTRY)
DEAD_LETTERED = Counter(
    "stream_trainer_dead_letter_messages_total", "Malformed messages sent to the dead-letter topic.",
    ["topic", "reason"], registry=REGISTRY)
DEAD_LETTER_BACKLOG = Gauge(
    "stream_trainer_dead_letter_backlog", "Groups of malformed messages waiting to be dead-lettered; positions "
    "stay behind them until they are.", registry=REGISTRY)
DEAD_LETTER_FAILURES = Counter(
    "stream_trainer_dead_letter_failures_total", "Attempts to publish to the dead-letter topic that failed "
    "(they are retried).", registry=REGISTRY)
MESSAGES_LOST = Counter(
    "stream_trainer_messages_lost_total",
    "Messages deleted (by retention) before the trainer read them; the trainer continued after them.",
    ["topic", "partition", "reason"], registry=REGISTRY)
SOURCE_RESTARTS = Counter(
    "stream_trainer_source_restarts_total", "Times a partition's Kafka reader failed and was restarted.",
    ["topic", "partition"], registry=REGISTRY)
KAFKA_CONSUMERS = Gauge(
    "stream_trainer_kafka_consumers", "librdkafka consumers held by this process's readers (tensorflow-io: one "
    "per partition, a retired reader's until tensorflow-io returns control to it; confluent-kafka: 1).",
    registry=REGISTRY)
INBOX_MESSAGES = Gauge(
    "stream_trainer_inbox_messages", "Messages read from Kafka and not yet taken for decoding: staged per partition "
    "plus queued in the inbox (bounded by trainer.source.queue_capacity and each partition's share).",
    registry=REGISTRY)
CHECKPOINTS = Counter("stream_trainer_checkpoints_total", "Checkpoints written (weights, optimizer, offsets).",
                      registry=REGISTRY)
CHECKPOINT_FAILURES = Counter(
    "stream_trainer_checkpoint_failures_total", "Checkpoint saves that failed; offsets were not committed.",
    registry=REGISTRY)
COMMIT_FAILURES = Counter(
    "stream_trainer_commit_failures_total", "Consumer-group offset commits that failed after a checkpoint.",
    registry=REGISTRY)
EXPORTS = Counter("stream_trainer_exports_total", "Models exported for serving, by outcome (written | declined).",
                  ["outcome"], registry=REGISTRY)
STEP_SECONDS = Histogram(
    "stream_trainer_step_duration_seconds", "Wall time of one training step.", buckets=_STEP_BUCKETS,
    registry=REGISTRY)
INPUT_WAIT_SECONDS = Histogram(
    "stream_trainer_input_wait_seconds", "Time the loop waited for fresh rows before a step.",
    buckets=_WAIT_BUCKETS, registry=REGISTRY)
COLLECTIVE_SECONDS = Histogram(
    "stream_trainer_collective_seconds", "Time of the per-step vote among workers (multi-worker jobs).",
    buckets=_COLLECTIVE_BUCKETS, registry=REGISTRY)
LATENCY_SECONDS = Histogram(
    "stream_trainer_produce_to_train_latency_seconds", "From a message's produce timestamp to its training step.",
    buckets=_LATENCY_BUCKETS, registry=REGISTRY)
LOSS = Gauge("stream_trainer_loss", "Training loss of the latest step.", registry=REGISTRY)
PREQUENTIAL_LOSS = Gauge(
    "stream_trainer_prequential_loss",
    "Mean loss of rows scored before training on them, over the last status interval (part = fresh | replay).",
    ["part"], registry=REGISTRY)
PREQUENTIAL_MEAN_IOU = Gauge(
    "stream_trainer_prequential_mean_iou",
    "Mean IoU of rows scored before training on them, over the last status interval (part = fresh | replay).",
    ["part"], registry=REGISTRY)
REPLAY_MEMBERS = Gauge("stream_trainer_replay_members", "Examples held by the replay store.", registry=REGISTRY)
REPLAY_BYTES = Gauge("stream_trainer_replay_bytes", "Memory allocated by the replay store.", registry=REGISTRY)
REPLAY_RESTORED = Counter(
    "stream_trainer_replay_restored_total", "Replay members re-read from Kafka after a restart, by outcome "
    "(restored | lost).", ["outcome"], registry=REGISTRY)
EVAL_MEAN_IOU = Gauge("stream_trainer_eval_mean_iou", "Mean IoU over the 3 trimap classes on the eval set.",
                      registry=REGISTRY)
EVAL_PIXEL_ACCURACY = Gauge("stream_trainer_eval_pixel_accuracy", "Pixel accuracy on the eval set.",
                            registry=REGISTRY)
CONSUMER_LAG = Gauge(
    "stream_trainer_consumer_lag_messages", "Messages in the partition after the trainer's position.",
    ["topic", "partition"], registry=REGISTRY)
LAST_CHECKPOINT = Gauge(
    "stream_trainer_last_checkpoint_timestamp_seconds", "Unix time of the last successful checkpoint.",
    registry=REGISTRY)
GLOBAL_STEP = Gauge("stream_trainer_global_step", "Training step of the job, continued across restarts.",
                    registry=REGISTRY)
WORKERS = Gauge("stream_trainer_workers", "Workers in this training job.", registry=REGISTRY)
FUNCTION_TRACES = Gauge(
    "stream_trainer_function_traces", "tf.function traces of this worker's training step and collectives "
    "since start; bounded, so flat after the first checkpoints.", registry=REGISTRY)
COLLECTIVE_WATCHDOGS = Gauge(
    "stream_trainer_collective_watchdog_threads", "Threads TensorFlow holds for this worker's collectives: one "
    "per collective started within the last peer_timeout_s (0 for a trainer alone).", registry=REGISTRY)


class _WithWorker(Collector):
    """Every sample of ``inner`` with a ``worker`` label added."""

    def __init__(self, inner: CollectorRegistry, worker: str) -> None:
        self.inner = inner
        self.worker = worker

    def collect(self) -> Iterator[Metric]:
        for family in self.inner.collect():
            out = Metric(family.name, family.documentation, family.type, family.unit)
            for s in family.samples:
                out.add_sample(s.name, {**s.labels, "worker": self.worker}, s.value, s.timestamp, s.exemplar)
            yield out


def exposition(worker: int) -> CollectorRegistry:
    """The registry served on /metrics: every metric above, labelled with this worker."""
    exposed = CollectorRegistry(auto_describe=False)
    exposed.register(_WithWorker(REGISTRY, str(worker)))
    return exposed


def serve(host: str, port: int, worker: int = 0) -> Callable[[], None]:
    """Start the /metrics endpoint (port 0 disables it) and return what stops it; OSError if the port is taken."""
    if not port:
        return lambda: None
    server, _ = start_http_server(port, addr=host, registry=exposition(worker))

    def close() -> None:
        server.shutdown()
        server.server_close()

    return close
