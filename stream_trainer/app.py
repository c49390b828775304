"""Wiring for the trainer daemon: build every part from Settings and run the loop.

This is the only place that constructs clients and threads; ``cli.py`` calls ``run_trainer``
and so do the tests, which pass ``handle_signals=False`` and drive shutdown with ``stop``.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from functools import partial

from stream_trainer import metrics
from stream_trainer.config import Settings
from stream_trainer.errors import CheckpointError, ConfigError
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
from stream_trainer.loop import tensorboard
from stream_trainer.loop.accountant import Accountant
from stream_trainer.loop.scorer import Scorer
from stream_trainer.loop.train_loop import LoopParts, RunSummary, TrainLoop
from stream_trainer.quality.deadletter import DeadLetterWorker
from stream_trainer.serve.export import Publisher
from stream_trainer.state import leftovers, writable
from stream_trainer.state.checkpoint import CheckpointStore, Restored
from stream_trainer.state.checkpointer import Checkpointer
from stream_trainer.state.committer import Committer
from stream_trainer.state.ownership import DirectoryLock, claim
from stream_trainer.state.progress import OffsetTracker
from stream_trainer.threads import Threads

log = logging.getLogger(__name__)

# How often the security watchdog re-checks the cluster on fresh connections (docs/operations.md).
WATCHDOG_INTERVAL_S = 30.0
# Bound on each background part's close at shutdown (docs/operations.md: how long a stop takes).
_CLOSE_S = 5.0


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
    """Train until ``stop`` is set, a signal arrives, a configured limit is reached or a part fails.

    The parts are built in the order the data flows; each registers its close with one
    ``ExitStack`` as it is built, so whatever ends the run (a stop, a limit, an exception from any
    line below) closes them in reverse, each bounded, and releases the checkpoint directory.
    ``stop`` is the only stop signal. The parts that must outlive the loop's stop (the final dead
    letters, the final commit) are closed explicitly, after it.
    """
    stop = stop or threading.Event()
    tcfg, topics = settings.trainer, settings.topics
    writable.check(settings)  # before anything starts (the CLI checks before TensorFlow loads, too)
    threads = Threads()
    with ExitStack() as resources:
        # MultiWorkerMirroredStrategy must exist before any other TensorFlow operation runs, and
        # our signal handlers after it: it installs its own for SIGTERM (a preemption notifier).
        workers = make_workers(tcfg.cluster)
        workers.agree_config(settings)  # before any collective whose running depends on local settings
        resources.enter_context(_signals_set(stop, handle_signals))
        resources.callback(_serve_metrics(settings, workers))
        lock = DirectoryLock(tcfg.checkpoint.dir)
        resources.callback(lock.release)  # after the cluster closed: a successor finds the group free too
        cluster = Cluster(settings.kafka, group_id=tcfg.source.group_id)
        resources.callback(cluster.close)
        cluster.wait_until_reachable()
        partitions, partition_count = _my_partitions(cluster, settings, workers)
        cluster.ensure_topics({topics.dead_letter: 1}, topics.replication_factor)

        policy = precision.apply(tcfg.model.precision)
        # The chief owns the checkpoint directory and the group before it restores anything, so a
        # newer copy (rolling update) takes over from the older one's last checkpoint.
        if not workers.chief_only("claiming the checkpoint directory",
                                  lambda: claim(lock, cluster, topics.train, tcfg.checkpoint.when_owned, stop)):
            return RunSummary(stopped_by="signal")
        if workers.is_chief:
            leftovers.remove_abandoned_writes(tcfg.checkpoint.dir)
        with workers.scope():
            model = build_unet(tcfg.pipeline.image_size, tcfg.model)
            optimizer = build_optimizer(scaled_learning_rate(tcfg.model, tcfg.cluster, workers.count))
        store = CheckpointStore(tcfg.checkpoint, model, optimizer, topics.train, workers, tcfg.cluster.scratch_dir)
        resources.callback(store.close)
        restored = store.restore()
        if restored:
            log.info("restored %s at step %d", restored.path, restored.step)
        replay = _replay_store(settings, workers, cluster, restored, partitions)

        starts = start_offsets(cluster, settings, partitions, restored.offsets if restored else {})
        tracker = OffsetTracker(starts)
        # Its own event, not ``stop``: it must still deliver the final holes after the loop stopped.
        dead_letters = DeadLetterWorker(cluster, topics.dead_letter, threading.Event(), threads, tcfg.pipeline,
                                        [topics.eval])
        accountant = Accountant(topics.train, tracker, dead_letters, replay, tcfg.loop.trained_log)
        batch = tcfg.pipeline.batch_size
        fresh = FreshRows(capacity=max(2 * batch, tcfg.pipeline.decode_group, tcfg.pipeline.shuffle_buffer))
        inputs = Inputs(settings, cluster, tracker.reset, starts, fresh, workers.index, workers.count, stop,
                        partition_count, threads, on_dropped=accountant.dropped)
        workers.compile_step(make_replica_step(model, optimizer, tcfg.pipeline.image_size, tcfg.pipeline.flip),
                             tcfg.pipeline.image_size)
        committer = Committer(cluster, topics.train, tracker.positions)
        # tfio waits forever on revoked credentials or an untrusted certificate: a confluent-kafka
        # check every 30 s turns them into a clear error and a stop (kafka/preflight.py).
        watchdog = preflight.Watchdog(settings.kafka, topics.train, interval_s=WATCHDOG_INTERVAL_S,
                                      group=tcfg.source.group_id)
        # The chief scores when it evaluates on a schedule, or when the export policy needs scores.
        scored = workers.is_chief and (tcfg.loop.eval_every_steps > 0 or tcfg.checkpoint.export_policy == "improved")
        publisher = Publisher(tcfg.checkpoint, model, topics.train, policy) if workers.is_chief else None
        board = tensorboard.for_worker(settings, workers.is_chief, optimizer)
        if board is not None:
            resources.callback(board.close)
            board.started(restored.step if restored else 0, settings)
        parts = LoopParts(workers=workers, batcher=Batcher(fresh, replay, tcfg.pipeline, tcfg.replay,
                                                           tcfg.pipeline.image_size),
                          accountant=accountant, checkpointer=Checkpointer(store, tracker, committer, replay, workers),
                          scorer=Scorer(cluster, topics.eval, tcfg.loop, model, tcfg.pipeline.image_size, batch,
                                        dead_letters, max_pixels=tcfg.pipeline.max_pixels) if scored else None,
                          publisher=publisher, inputs=inputs, stop=stop, threads=threads, board=board)
        loop = TrainLoop(tcfg.loop, tcfg.checkpoint, parts, tcfg.cluster.max_wait_ms,
                         start_step=restored.step if restored else 0)

        # Threads start last, once everything they feed exists; closed in reverse when the run ends.
        watchdog.start(threads)
        resources.callback(watchdog.stop, 0)  # a check in flight may take the connect timeout: not waited for
        dead_letters.start()
        resources.callback(_close_dead_letters, dead_letters)
        committer.start(threads)
        resources.callback(_close_committer, committer, workers.is_chief)
        resources.callback(stop.set)  # first on the way out: readers, feeder and watcher end
        inputs.start()
        summary = loop.run()
    log.info("trainer stopped: %s", summary)
    if not summary.final_checkpoint_ok:
        msg = (f"the final checkpoint at step {summary.step} could not be written (see the error above); the last "
               f"good checkpoint is at step {store.last_saved_step} and a restart resumes there")
        raise CheckpointError(msg)
    return summary


def _serve_metrics(settings: Settings, workers: Workers) -> Callable[[], None]:
    """Start /metrics; return what stops it. A port in use is a config error naming the key."""
    cfg = settings.trainer.metrics
    try:
        return metrics.serve(cfg.host, cfg.port, workers.index)
    except OSError as exc:
        msg = f"config key 'trainer.metrics.port': cannot listen on {cfg.host}:{cfg.port} ({exc.strerror})"
        raise ConfigError(msg) from exc


def _replay_store(settings: Settings, workers: Workers, cluster: Cluster, restored: Restored | None,
                  partitions: list[int]) -> ReplayStore | None:
    """The replay store of ``trainer.replay`` (None when off), refilled with the checkpoint's members."""
    tcfg = settings.trainer
    if tcfg.replay.size_mib <= 0:
        return None
    replay = ReplayStore(int(tcfg.replay.size_mib * 2**20), tcfg.pipeline.image_size,
                         tcfg.replay.seed + workers.index, tcfg.replay.policy)  # type: ignore[arg-type]
    metrics.REPLAY_BYTES.set(replay.nbytes)
    if restored and restored.replay:
        workers.together("restoring the replay store", partial(restore_store, replay, restored.replay, cluster,
                                                               settings.topics.train, tcfg.pipeline.image_size,
                                                               partitions))
    return replay


def _close_dead_letters(dead_letters: DeadLetterWorker) -> None:
    """End the dead-letter thread; holes still queued stay behind the saved positions (re-read next run)."""
    dead_letters.stop.set()
    dead_letters.join(_CLOSE_S)


def _close_committer(committer: Committer, is_chief: bool) -> None:
    """End the committer's thread, then commit the final checkpoint's positions, each bounded."""
    committer.close(_CLOSE_S)
    if is_chief and not committer.flush(_CLOSE_S):
        log.error("final offset commit failed; the group lags the checkpoint until the next run commits")
