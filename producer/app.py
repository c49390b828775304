"""Wiring for one replay run: source -> wire encoding -> paced sends -> summary.

``run`` is what the CLI, ``make demo``, the benchmark and the tests call. It stops after
``producer.passes`` passes, after ``limit`` messages, or when ``stop`` is set (SIGTERM/SIGINT with
``handle_signals``); in every case it flushes what is in flight and returns the counts.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType

from confluent_kafka import KafkaError, Producer

from producer import metrics
from producer.send import RateLimiter, Sender, producer_config
from producer.sources import OVERSIZE, Skip, Source, open_source
from stream_trainer import wire
from stream_trainer.config import Settings
from stream_trainer.errors import StreamTrainerError
from stream_trainer.kafka import Cluster

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 2.0
FLUSH_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class ReplaySummary:
    """What a run did. ``sent`` counts broker acknowledgements (train and eval topics together)."""

    sent: int = 0
    failed: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    eval_sent: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        """One parseable line: ``summary sent=N failed=N skipped=N eval_sent=N bytes=N seconds=S``."""
        reasons = "".join(f" skipped_{reason}={n}" for reason, n in sorted(self.skipped.items()))
        return (f"summary sent={self.sent} failed={self.failed} skipped={sum(self.skipped.values())} "
                f"eval_sent={self.eval_sent} bytes={self.bytes} seconds={self.seconds:.1f}{reasons}")


@contextlib.contextmanager
def _signals_set(stop: threading.Event, enabled: bool) -> Iterator[None]:
    """While inside, SIGTERM and SIGINT only set ``stop``; the loop notices and flushes."""
    if not enabled:
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: stopping after in-flight messages", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _prepare_topics(cluster: Cluster, settings: Settings) -> dict[str, int]:
    """Create missing topics if configured; return the partition count of each topic we write."""
    t = settings.topics
    if settings.producer.create_topics:
        cluster.ensure_topics({t.train: t.partitions, t.eval: t.partitions, t.dead_letter: t.partitions},
                              replication_factor=t.replication_factor)
    wanted = [t.train] + ([t.eval] if settings.producer.send_eval else [])
    return {topic: len(cluster.partitions(topic)) for topic in wanted}


def run(settings: Settings, *, stop: threading.Event | None = None, handle_signals: bool = False,
        limit: int | None = None) -> ReplaySummary:
    """Replay the configured source into Kafka and return what happened.

    Raises ConfigError for an unusable source or missing topic and BrokerUnavailableError when no
    broker answers within ``kafka.connect_timeout_s``. Bad images never raise: they are skipped,
    logged and counted. ``handle_signals=True`` only from the main thread (Python's rule for
    signal handlers); tests pass their own ``stop`` instead.
    """
    stop = stop or threading.Event()
    p = settings.producer
    source = open_source(p.source)  # a bad path or missing tfds fails before touching the broker
    # Cluster routes librdkafka's per-attempt connect errors to a quiet logger, and
    # wait_until_reachable turns a broker that never answers into one clear error.
    cluster = Cluster(settings.kafka, group_id="pet-producer")
    try:
        cluster.wait_until_reachable()
        partitions = _prepare_topics(cluster, settings)
    finally:
        cluster.close()

    last_error = [""]

    def on_error(err: KafkaError) -> None:
        if str(err) != last_error[0]:  # librdkafka repeats a failure on every reconnect attempt
            last_error[0] = str(err)
            log.warning("kafka: %s", err)

    # Importing TensorFlow for the first encode takes seconds; do it before the clock starts.
    wire.encode(wire.PetRecord("", b"", b""), 0)
    sender = Sender(Producer(producer_config(settings, error_cb=on_error)))
    skipped: Counter[str] = Counter()
    metrics.declare_topics(*partitions)
    stop_metrics = metrics.serve(p.metrics.host, p.metrics.port)
    start = time.monotonic()
    try:
        with _signals_set(stop, handle_signals):
            _replay(settings, source, sender, partitions, skipped, stop, limit)
    finally:
        sender.flush(FLUSH_TIMEOUT_S)
        stop_metrics()
    return ReplaySummary(sent=sender.sent, failed=sender.failed, skipped=dict(skipped),
                         eval_sent=sender.sent_by_topic[settings.topics.eval], bytes=sender.bytes,
                         seconds=time.monotonic() - start)


def _replay(settings: Settings, source: Source, sender: Sender, partitions: dict[str, int],
            skipped: Counter[str], stop: threading.Event, limit: int | None) -> None:
    p, topics = settings.producer, settings.topics
    limiter = RateLimiter(p.rate)
    oversize: set[str] = set()
    started = last_report = time.monotonic()
    passes = itertools.count() if p.passes == 0 else range(p.passes)
    for pass_index in passes:
        sent_before = sender.produced
        # The eval set is sent once per run: more copies would only weigh some images more.
        include_test = p.send_eval and pass_index == 0
        for item in source.iterate(pass_index, p.shuffle, include_test):
            if stop.is_set():
                return
            now = time.monotonic()
            if now - last_report >= PROGRESS_EVERY_S:
                last_report = now
                log.info("sent=%d rate=%.1f/s failed=%d skipped=%d in_flight=%d pass=%d", sender.sent,
                         sender.sent / max(now - started, 1e-9), sender.failed, sum(skipped.values()),
                         sender.in_flight, pass_index + 1)
            if isinstance(item, Skip):
                _skip(skipped, item.reason)
                continue
            if item.image_id in oversize:
                continue
            topic = topics.eval if item.split == "test" else topics.train
            if topic not in partitions:
                continue
            if (limit is not None and sender.produced >= limit) or not limiter.wait(stop):
                return
            value = wire.encode(item, int(time.time() * 1000))
            if len(value) + len(item.image_id.encode()) > p.message_max_bytes:
                oversize.add(item.image_id)
                log.warning("skipping %s: message is %d bytes, producer.message_max_bytes is %d",
                            item.image_id, len(value), p.message_max_bytes)
                _skip(skipped, OVERSIZE)
                continue
            rr = partitions[topic] if p.partitioner == "round_robin" else None
            if not sender.send(topic, item.image_id, value, stop, partitions=rr):
                return
        if sender.produced == sent_before and p.passes == 0:
            msg = (f"pass {pass_index + 1} had nothing to send (no usable train images); "
                   f"refusing to replay an empty pass forever")
            raise StreamTrainerError(msg)


def _skip(skipped: Counter[str], reason: str) -> None:
    skipped[reason] += 1
    metrics.SKIPPED.labels(reason=reason).inc()
