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

from stream_trainer import metrics
from stream_trainer.config import Settings
from stream_trainer.errors import CheckpointError, ConfigError, StreamTrainerError
from stream_trainer.ingest.fresh import FreshRows
from stream_trainer.ingest.inputs import Inputs, start_offsets
from stream_trainer.ingest.source import assigned_partitions
from stream_trainer.kafka import Cluster, preflight
from stream_trainer.learn import precision
from stream_trainer.learn.batcher import Batcher
from stream_trainer.learn.model import build_optimizer, build_unet
from stream_trainer.learn.replay import ReplayStore
from stream_trainer.learn.replay_fetch import restore_store
from stream_trainer.learn.step import make_replica_step
from stream_trainer.learn.workers import Workers, make_workers, scaled_learning_rate
from stream_trainer.loop.accountant import Accountant
from stream_trainer.loop.scorer import Scorer
from stream_trainer.loop.train_loop import LoopParts, RunSummary, TrainLoop
from stream_trainer.quality.deadletter import DeadLetterWorker
from stream_trainer.serve.export import Publisher
from stream_trainer.state.checkpoint import CheckpointStore
from stream_trainer.state.checkpointer import Checkpointer
from stream_trainer.state.committer import Committer
from stream_trainer.state.ownership import DirectoryLock, claim
from stream_trainer.state.progress import OffsetTracker
from stream_trainer.threads import Threads

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


def _my_partitions(cluster: Cluster, settings: Settings, workers: Workers) -> tuple[list[int], int]:
    topic, source = settings.topics.train, settings.trainer.source
    every = cluster.partitions(topic)
    if workers.count > len(every) and not source.partitions:
        msg = (f"config key 'trainer.cluster.workers': {workers.count} workers but topic '{topic}' has only "
               f"{len(every)} partitions; every worker needs at least one (add partitions or remove workers)")
        raise ConfigError(msg)
    mine = assigned_partitions(every, source, workers.index, workers.count)
    if not mine:
        msg = (f"config key 'trainer.source.partitions' assigns no partition of topic '{topic}' to this worker "
               f"(partitions={source.partitions}, worker {workers.index} of {workers.count})")
        raise ConfigError(msg)
    return mine, len(every)


def run_trainer(settings: Settings, *, stop: threading.Event | None = None,
                handle_signals: bool = False) -> RunSummary:
    """Train until ``stop`` is set, a signal arrives, or a configured limit is reached."""
    stop = stop or threading.Event()
    tcfg, topics = settings.trainer, settings.topics
    # MultiWorkerMirroredStrategy must exist before any other TensorFlow operation runs.
    workers = make_workers(tcfg.cluster)
    try:
        metrics.serve(tcfg.metrics.host, tcfg.metrics.port, workers.index)
    except OSError as exc:
        where = f"{tcfg.metrics.host}:{tcfg.metrics.port}"
        msg = f"config key 'trainer.metrics.port': cannot listen on {where} ({exc.strerror})"
        raise ConfigError(msg) from exc

    cluster = Cluster(settings.kafka, group_id=tcfg.source.group_id)
    cluster.wait_until_reachable()
    partitions, partition_count = _my_partitions(cluster, settings, workers)
    cluster.ensure_topics({topics.dead_letter: 1}, topics.replication_factor)

    policy = precision.apply(tcfg.model.precision)
    # The chief owns the checkpoint directory and the group before it restores anything, so a
    # newer copy (rolling update) takes over from the older one's last checkpoint.
    lock = DirectoryLock(tcfg.checkpoint.dir)
    if workers.is_chief and not claim(lock, cluster, topics.train, tcfg.checkpoint.when_owned, stop):
        cluster.close()
        return RunSummary(stopped_by="signal")
    with workers.scope():
        model = build_unet(tcfg.pipeline.image_size, tcfg.model)
        optimizer = build_optimizer(scaled_learning_rate(tcfg.model, tcfg.cluster, workers.count))
    store = CheckpointStore(tcfg.checkpoint, model, optimizer, topics.train, workers, tcfg.cluster.scratch_dir)
    restored = store.restore()
    if restored:
        log.info("restored %s at step %d", restored.path, restored.step)
    replay = None
    if tcfg.replay.size_mib > 0:
        replay = ReplayStore(int(tcfg.replay.size_mib * 2**20), tcfg.pipeline.image_size,
                             tcfg.replay.seed + workers.index, tcfg.replay.policy)  # type: ignore[arg-type]
        metrics.REPLAY_BYTES.set(replay.nbytes)
        if restored and restored.replay:
            restore_store(replay, restored.replay, cluster, topics.train, tcfg.pipeline.image_size, partitions)
    starts = start_offsets(cluster, settings, partitions, restored.offsets if restored else {})
    tracker = OffsetTracker(starts)
    batch = tcfg.pipeline.batch_size
    fresh = FreshRows(capacity=max(2 * batch, tcfg.pipeline.decode_group, tcfg.pipeline.shuffle_buffer))
    inputs = Inputs(settings, cluster, tracker.reset, starts, fresh, workers.index, workers.count, stop,
                    partition_count)
    workers.compile_step(make_replica_step(model, optimizer, tcfg.pipeline.image_size, tcfg.pipeline.flip),
                         tcfg.pipeline.image_size)

    threads = Threads()
    halt = threading.Event()  # background workers outlive the loop's stop: final dead letters, commit

    # tfio waits forever on revoked credentials or an untrusted certificate: a confluent-kafka
    # check every 30 s turns them into a clear error and a stop (kafka/preflight.py).
    security_failures: list[StreamTrainerError] = []

    def security_failed(exc: StreamTrainerError) -> None:
        security_failures.append(exc)
        stop.set()

    watchdog = preflight.Watchdog(settings.kafka, topics.train, security_failed, stop=halt,
                                  group=tcfg.source.group_id).start()
    dead_letters = DeadLetterWorker(cluster, topics.dead_letter, halt).start()
    committer = Committer(cluster, topics.train, tracker.positions, halt).start()
    inputs.start()
    # The chief scores when it evaluates on a schedule, or when the export policy needs scores.
    scored = workers.is_chief and (tcfg.loop.eval_every_steps > 0 or tcfg.checkpoint.export_policy == "improved")
    parts = LoopParts(workers=workers, batcher=Batcher(fresh, replay, tcfg.pipeline, tcfg.replay,
                                                       tcfg.pipeline.image_size),
                      accountant=Accountant(topics.train, tracker, dead_letters, replay, tcfg.loop.trained_log),
                      checkpointer=Checkpointer(store, tracker, committer, replay, workers),
                      scorer=Scorer(cluster, topics.eval, tcfg.loop, model, tcfg.pipeline.image_size, batch,
                                    dead_letters) if scored else None,
                      publisher=Publisher(tcfg.checkpoint, model, topics.train, policy) if workers.is_chief else None,
                      inputs=inputs, stop=stop, threads=threads)
    loop = TrainLoop(tcfg.loop, tcfg.checkpoint, parts, tcfg.cluster.max_wait_ms,
                     start_step=restored.step if restored else 0)
    try:
        with _signals_set(stop, handle_signals):
            summary = loop.run()
    finally:
        stop.set()
        halt.set()
        committer.join(5.0)
        dead_letters.join(5.0)
        store.close()
        watchdog.stop(0)
    if workers.is_chief and not committer.flush():
        log.error("final offset commit failed; the group lags the checkpoint until the next run commits")
    cluster.close()
    lock.release()
    log.info("trainer stopped: %s", summary)
    if security_failures:
        raise security_failures[0]
    if not summary.final_checkpoint_ok:
        msg = (f"the final checkpoint at step {summary.step} could not be written (see the error above); the last "
               f"good checkpoint is at step {store.last_saved_step} and a restart resumes there")
        raise CheckpointError(msg)
    return summary
