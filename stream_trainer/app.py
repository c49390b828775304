"""Wiring for the trainer daemon: build every part from Settings and run the loop.

This is the only place that constructs clients and threads; ``cli.py`` calls ``run_trainer``
and so do the tests, which pass ``handle_signals=False`` and drive shutdown with ``stop``.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from stream_trainer import metrics, pipeline, source
from stream_trainer.checkpoint import CheckpointStore, Restored
from stream_trainer.committer import Committer
from stream_trainer.config import Settings
from stream_trainer.deadletter import DeadLetterWorker
from stream_trainer.errors import ConfigError
from stream_trainer.evaluate import Evaluator, read_eval_values
from stream_trainer.feeder import Feeder
from stream_trainer.kafka import Cluster
from stream_trainer.loop import RunSummary, TrainLoop
from stream_trainer.model import build_optimizer, build_unet
from stream_trainer.progress import OffsetTracker

log = logging.getLogger(__name__)


@contextmanager
def _signals_set(stop: threading.Event, enabled: bool) -> Iterator[None]:
    """SIGTERM/SIGINT only set ``stop``; the loop notices within a fraction of a second."""
    if not enabled:
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum: int, _frame: object) -> None:
        log.info("received %s: finishing the current step, checkpointing, committing", signal.Signals(signum).name)
        stop.set()

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def start_offsets(cluster: Cluster, topic: str, partitions: list[int], restored: Restored | None,
                  auto_offset_reset: str) -> dict[int, int]:
    """Per partition: the checkpoint's offset, else the group's committed one, else the reset policy."""
    saved = restored.offsets if restored else {}
    committed = cluster.committed(topic, [p for p in partitions if p not in saved])
    marks = cluster.watermarks(topic, partitions)
    starts: dict[int, int] = {}
    for p in partitions:
        if p in saved:
            starts[p], origin = saved[p], "checkpoint"
        elif p in committed:
            starts[p], origin = committed[p], "group"
        else:
            starts[p] = marks[p].low if auto_offset_reset == "earliest" else marks[p].high
            origin = auto_offset_reset
        if starts[p] < marks[p].low:
            log.warning("partition %d: offset %d was deleted by retention; starting at %d", p, starts[p], marks[p].low)
            starts[p] = marks[p].low
        log.info("partition %d starts at offset %d (from %s; log end %d)", p, starts[p], origin, marks[p].high)
    return starts


def run_trainer(settings: Settings, *, stop: threading.Event | None = None,
                handle_signals: bool = False) -> RunSummary:
    """Train until ``stop`` is set, a signal arrives, or a configured limit is reached."""
    stop = stop or threading.Event()
    tcfg, topics = settings.trainer, settings.topics
    try:
        metrics.serve(tcfg.metrics.host, tcfg.metrics.port)
    except OSError as exc:
        msg = f"config key 'trainer.metrics.port': cannot listen on {tcfg.metrics.host}:{tcfg.metrics.port} ({exc.strerror})"
        raise ConfigError(msg) from exc

    cluster = Cluster(settings.kafka, group_id=tcfg.source.group_id)
    cluster.wait_until_reachable()
    partitions = source.assigned_partitions(cluster.partitions(topics.train), tcfg.source)
    if not partitions:
        msg = (f"config keys 'trainer.source.*' assign no partition of topic '{topics.train}' to this worker "
               f"(partitions={tcfg.source.partitions}, worker {tcfg.source.worker_index}/{tcfg.source.worker_count})")
        raise ConfigError(msg)
    cluster.ensure_topics({topics.dead_letter: 1}, topics.replication_factor)

    model = build_unet(tcfg.pipeline.image_size, tcfg.model)
    optimizer = build_optimizer(tcfg.model)
    store = CheckpointStore(tcfg.checkpoint, model, optimizer, topics.train)
    restored = store.restore()
    if restored:
        log.info("restored %s at step %d", restored.path, restored.step)
    tracker = OffsetTracker(start_offsets(cluster, topics.train, partitions, restored,
                                          tcfg.source.auto_offset_reset))

    def make_dataset():  # noqa: ANN202 - rebuilt by the feeder after a source failure
        read = source.partition_reader(settings.kafka, topics.train, tcfg.source.poll_timeout_ms,
                                       f"{tcfg.source.group_id}-tfio")
        decoded = pipeline.decoded_partitions(read, tracker.positions(), tcfg.pipeline.image_size)
        return pipeline.train_batches(decoded, tcfg.pipeline)

    def make_evaluator() -> Evaluator | None:
        try:
            values = read_eval_values(cluster, topics.eval, tcfg.loop.eval_max_images, tcfg.loop.eval_wait_s)
        except ConfigError as exc:
            log.warning("evaluation disabled: %s", exc)
            return None
        if not values:
            log.warning("eval topic '%s' is empty; evaluation disabled for this run", topics.eval)
            return None
        return Evaluator(model, values, tcfg.pipeline.image_size, tcfg.loop.snapshot_dir, tcfg.pipeline.batch_size)

    # Background workers outlive the loop's stop: they drain dead letters and the final commit.
    halt = threading.Event()
    feeder = Feeder(make_dataset, stop).start()
    dead_letters = DeadLetterWorker(cluster, topics.train, topics.dead_letter, halt).start()
    committer = Committer(cluster, topics.train, tracker.positions, halt).start()
    loop = TrainLoop(tcfg.loop, topics.train, model, optimizer, feeder, tracker, store, committer, dead_letters,
                     make_evaluator, stop, start_step=restored.step if restored else 0)
    try:
        with _signals_set(stop, handle_signals):
            summary = loop.run()
    finally:
        stop.set()
        halt.set()
        committer.join(5.0)
        dead_letters.join(5.0)
    if not committer.flush():
        log.error("final offset commit failed; the group lags the checkpoint until the next run commits")
    cluster.close()
    log.info("trainer stopped: %s", summary)
    return summary
