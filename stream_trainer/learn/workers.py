"""The job's workers: one process alone, or several training one model with tf.distribute.

Several workers run ``tf.distribute.MultiWorkerMirroredStrategy`` with our own ``strategy.run``
loop (Keras ``fit`` under it is broken in Keras 3, keras#20585). Every collective must be joined by
every worker or the job deadlocks, so the loop never lets a worker decide alone to do something
collective: each step starts with a **vote**, one small all-reduce in which every worker says how
many rows it has and whether it wants to stop, and the chief says whether to checkpoint or
evaluate. Everyone then acts on the same totals: nobody has data -> nobody steps (no optimizer
update on nothing); someone has data -> everyone steps, idle workers with zero-weight rows.

Everything that decides whether a collective runs (the settings ``collective_settings`` lists)
must be equal on every worker: ``agree_config`` checks it once at start. Work that one worker
does alone between collectives (the chief's evaluation, export, claim; each worker's replay
restore) runs inside ``together``/``chief_only``, which keep every collective short while it lasts.

A worker that dies is noticed by TensorFlow's coordination service (heartbeats, ~10 s); a worker
that hangs, by the collectives' timeout (``trainer.cluster.peer_timeout_s``). Either way the
collective raises here as ``PeerLostError`` naming the worker whose server no longer answers,
and the process exits non-zero: after an aborted collective TensorFlow needs a fresh process, so
a supervisor restarts the job. A worker whose peers never join exits after
``trainer.cluster.join_timeout_s`` naming them.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
import tensorflow as tf

from stream_trainer import metrics
from stream_trainer.config import ClusterConfig, ModelConfig, Settings
from stream_trainer.errors import ConfigError, PeerLostError
from stream_trainer.learn import agreement, collectives
from stream_trainer.learn.step import StepFn, input_signature
from stream_trainer.learn.watchdogs import Watchdogs, collective_ops

log = logging.getLogger(__name__)
Array = npt.NDArray[Any]

# Vote slots, summed over workers; flags mean "> 0" after the sum. Only the chief fills the last
# two: its clock says whether a checkpoint is due by time, its metadata how many partitions exist.
ROWS, FRESH, STOP, CHECKPOINT, PARTITIONS = range(5)
VOTE_SIZE = 5
# A worker's state in ``together``'s keep-alive rounds, one slot per worker.
_WORKING, _DONE, _DECLINED, _FAILED = 1, 2, 3, 4
_LOG_WAIT_EVERY_S = 30.0


def _nothing() -> None:
    return None


def cluster_from_env(cfg: ClusterConfig) -> tuple[list[str], int]:
    """The worker list and this worker's index: ``trainer.cluster`` or else ``TF_CONFIG``."""
    if cfg.workers:
        return list(cfg.workers), cfg.index
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return [], 0
    try:
        tf_config = json.loads(raw)
        workers = [str(w) for w in tf_config["cluster"]["worker"]]
        task = tf_config["task"]
        index = int(task["index"])
    except (ValueError, KeyError, TypeError) as exc:
        msg = f"environment variable TF_CONFIG is not a valid worker cluster description ({exc})"
        raise ConfigError(msg) from exc
    if task.get("type", "worker") != "worker" or not 0 <= index < len(workers):
        msg = "environment variable TF_CONFIG must name a task of type 'worker' with an index into cluster.worker"
        raise ConfigError(msg)
    return workers, index


class Workers:
    """One worker alone: every collective is the identity. ``MultiWorkers`` overrides them."""

    def __init__(self) -> None:
        self.index = 0
        self.count = 1
        self.addresses: list[str] = []
        self.strategy = tf.distribute.get_strategy()
        self._step: Any = None
        metrics.FUNCTION_TRACES.set_function(self.traces)
        metrics.COLLECTIVE_WATCHDOGS.set_function(self.watchdogs)

    def watchdogs(self) -> int:
        """TensorFlow's collective timeout threads alive now (``watchdogs.py``); none alone."""
        return 0

    def traces(self) -> int:
        """tf.function traces of this worker's step and collectives so far (bounded)."""
        return int(self._step.experimental_get_tracing_count()) if self._step is not None else 0

    @property
    def is_chief(self) -> bool:
        return self.index == 0

    def scope(self) -> Any:
        return self.strategy.scope()

    def compile_step(self, replica_step: StepFn, image_size: int) -> None:
        self._step = tf.function(replica_step, input_signature=input_signature(image_size))

    def step(self, image: Array, mask: Array, weight: Array, fresh: Array,
             total_weight: float) -> dict[str, Array]:
        out = self._step(image, mask, weight, fresh, np.float32(total_weight))
        return {k: v.numpy() for k, v in out.items()}

    def vote(self, ballot: Array) -> Array:
        return ballot

    def agree_config(self, settings: Settings) -> None:
        """Raise ``ConfigError`` naming every setting of ``collective_settings`` that differs between workers."""

    def together(self, what: str, work: Callable[[], object]) -> bool:
        """Run ``work`` here while every other worker runs its own; return when all are done.

        Every worker calls it at the same point. False everywhere if any worker's ``work`` returned
        False (the chief's claim gave up on a signal); a worker's exception is raised there, and
        the others raise ``PeerLostError`` naming it.
        """
        return work() is not False

    def chief_only(self, what: str, work: Callable[[], object]) -> bool:
        """``together`` with ``work`` on the chief and nothing on the other workers."""
        return self.together(what, work if self.is_chief else _nothing)

    def sum_vector(self, values: Array, what: str = "sum") -> Array:
        """Element-wise sum over workers of an int64 vector (same length and ``what`` everywhere)."""
        return values

    def broadcast_json(self, obj: Any) -> Any:
        """The chief's ``obj`` on every worker."""
        return obj

    def gather_json(self, obj: Any) -> list[Any]:
        """Every worker's ``obj``, in worker order, on every worker."""
        return [obj]

    def broadcast_variables(self, variables: list[tf.Variable]) -> None:
        """Every worker's variables take the chief's values (after the chief restored them)."""

    def gather_positions(self, own: Mapping[int, int], partitions: int) -> dict[int, int]:
        """Per partition, the position held by the worker that owns it (all workers' union)."""
        return dict(own)


class MultiWorkers(Workers):
    """Several processes under MultiWorkerMirroredStrategy; see the module docstring."""

    def __init__(self, addresses: list[str], index: int, cfg: ClusterConfig) -> None:
        super().__init__()
        self.index = index
        self.count = len(addresses)
        self.addresses = addresses
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec({"worker": addresses}), task_type="worker", task_id=index, rpc_layer="grpc")
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO,
            timeout_seconds=cfg.peer_timeout_s)
        # Blocks until every worker has joined the coordination service.
        self.strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver,
                                                                   communication_options=options)
        self._sum = collectives.SumOverWorkers(self.strategy)
        self._beat_s = min(1.0, cfg.peer_timeout_s / 4)
        self._other_traces = 0  # broadcast_variables' one-off function
        self._watchdogs = Watchdogs(cfg.peer_timeout_s)
        self._step_ops: int | None = None  # collective ops in one step, read from its graph

    def watchdogs(self) -> int:
        return self._watchdogs.alive()

    def traces(self) -> int:
        return super().traces() + self._sum.traces() + self._other_traces

    def compile_step(self, replica_step: StepFn, image_size: int) -> None:
        strategy = self.strategy

        def step(image: tf.Tensor, mask: tf.Tensor, weight: tf.Tensor, fresh: tf.Tensor,
                 total_weight: tf.Tensor) -> dict[str, tf.Tensor]:
            out = strategy.run(replica_step, args=(image, mask, weight, fresh, total_weight))
            return {k: strategy.experimental_local_results(v)[0] for k, v in out.items()}

        self._step = tf.function(step, input_signature=input_signature(image_size))

    def step(self, image: Array, mask: Array, weight: Array, fresh: Array,
             total_weight: float) -> dict[str, Array]:
        if self._step_ops is None:
            self._step_ops = collective_ops(self._step)
        self._watchdogs.started(self._step_ops)
        try:
            return super().step(image, mask, weight, fresh, total_weight)
        except tf.errors.OpError as exc:
            raise self._lost(exc) from exc

    def vote(self, ballot: Array) -> Array:
        t0 = time.monotonic()
        result = self.sum_vector(ballot, "vote")
        metrics.COLLECTIVE_SECONDS.observe(time.monotonic() - t0)
        return result

    def sum_vector(self, values: Array, what: str = "sum") -> Array:
        self._watchdogs.started(1)  # one all-reduce of one tensor
        try:
            return self._sum(np.asarray(values, np.int64), what, self.count)
        except tf.errors.OpError as exc:
            raise self._lost(exc) from exc

    def agree_config(self, settings: Settings) -> None:
        own = agreement.fingerprints(settings)
        vec = np.zeros((self.count, len(own)), np.int64)
        vec[self.index] = own
        table = self.sum_vector(vec.ravel(), "config agreement").reshape(self.count, len(own))
        agreement.check(table, self.addresses)

    def together(self, what: str, work: Callable[[], object]) -> bool:
        done, box = collectives.run_aside(work, f"worker-{self.index}-{what.replace(' ', '-')}")
        t0 = logged = time.monotonic()
        while True:
            # Each round is one short collective: the one that paces it is a worker still at work,
            # and it joins within a beat, far inside the peer timeout.
            done.wait(self._beat_s)
            mine = _WORKING
            if done.is_set():
                mine = _FAILED if "error" in box else _DECLINED if box.get("result") is False else _DONE
            vec = np.zeros(self.count, np.int64)
            vec[self.index] = mine
            states = self.sum_vector(vec, f"keep-alive while {what}")
            if (states != _WORKING).all():
                break
            if time.monotonic() - logged >= _LOG_WAIT_EVERY_S:
                logged = time.monotonic()
                busy = [i for i in range(self.count) if states[i] == _WORKING]
                log.info("waiting for %s %s (%.0f s so far)", collectives.names(busy, self.addresses), what,
                         logged - t0)
        if "error" in box:
            raise box["error"]
        failed = [i for i in range(self.count) if states[i] == _FAILED]
        if failed:
            msg = (f"{collectives.names(failed, self.addresses)} failed while {what} (its log says why); every "
                   f"worker stops, restart the whole job (it resumes from the last checkpoint)")
            raise PeerLostError(msg)
        return not (states == _DECLINED).any()

    def broadcast_json(self, obj: Any) -> Any:
        data = np.frombuffer(json.dumps(obj).encode(), np.uint8) if self.is_chief else np.zeros(0, np.uint8)
        length = int(self.sum_vector(np.array([data.size], np.int64), "broadcast size")[0])
        padded = np.zeros(length, np.int64)
        padded[:data.size] = data
        return json.loads(self.sum_vector(padded, "broadcast").astype(np.uint8).tobytes().decode())

    def gather_json(self, obj: Any) -> list[Any]:
        data = np.frombuffer(json.dumps(obj).encode(), np.uint8)
        sizes = np.zeros(self.count, np.int64)
        sizes[self.index] = data.size
        sizes = self.sum_vector(sizes, "gather sizes")
        # Each worker writes its bytes into its own slice of one zero vector; the sum is the union.
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        vec = np.zeros(int(offsets[-1]), np.int64)
        vec[offsets[self.index]:offsets[self.index + 1]] = data
        summed = self.sum_vector(vec, "gather").astype(np.uint8).tobytes()
        return [json.loads(summed[offsets[i]:offsets[i + 1]].decode()) for i in range(self.count)]

    def broadcast_variables(self, variables: list[tf.Variable]) -> None:
        strategy = self.strategy
        chief = 1.0 if self.is_chief else 0.0
        # One all-reduce per dtype: a collective packs its tensors into one buffer of one type.
        groups: dict[tf.DType, list[int]] = {}
        for i, v in enumerate(variables):
            groups.setdefault(v.dtype, []).append(i)

        def gather() -> list[list[tf.Tensor]]:
            def replica() -> list[list[tf.Tensor]]:
                ctx = tf.distribute.get_replica_context()
                # Masked sum: the chief's values plus zeros from everyone else.
                return [ctx.all_reduce(tf.distribute.ReduceOp.SUM,
                                       [tf.convert_to_tensor(variables[i]) * tf.cast(chief, dtype) for i in idx])
                        for dtype, idx in groups.items()]

            return [[strategy.experimental_local_results(t)[0] for t in group] for group in strategy.run(replica)]

        self._other_traces += 1  # once per start
        self._watchdogs.started(len(groups))
        try:
            values = tf.function(gather)()
        except tf.errors.OpError as exc:
            raise self._lost(exc) from exc
        for idx, group in zip(groups.values(), values, strict=True):
            for i, value in zip(idx, group, strict=True):
                variables[i].assign(value)

    def gather_positions(self, own: Mapping[int, int], partitions: int) -> dict[int, int]:
        # The largest partition count any worker knows: a partition one worker found before the
        # chief's metadata did must still reach the checkpoint.
        counts = np.zeros(self.count, np.int64)
        counts[self.index] = max(partitions, max(own, default=-1) + 1)
        partitions = int(self.sum_vector(counts, "partition count").max())
        # Two vectors in one sum: which worker owns a partition (count) and its position.
        vec = np.zeros(2 * partitions, np.int64)
        for p, offset in own.items():
            vec[p] = 1
            vec[partitions + p] = offset
        summed = self.sum_vector(vec, "positions")
        return {p: int(summed[partitions + p]) for p in range(partitions) if summed[p] > 0}

    def _lost(self, exc: tf.errors.OpError) -> PeerLostError:
        return collectives.lost(exc, self.index, self.addresses)


def scaled_learning_rate(model: ModelConfig, cluster: ClusterConfig, workers: int) -> ModelConfig:
    """The model settings with the learning rate for ``workers`` workers' global batch."""
    factor = {"sqrt": math.sqrt(workers), "linear": float(workers), "none": 1.0}[cluster.learning_rate_scaling]
    if factor != 1.0:
        log.info("learning rate %g x %.2f for %d workers (trainer.cluster.learning_rate_scaling: %s)",
                 model.learning_rate, factor, workers, cluster.learning_rate_scaling)
    return dataclasses.replace(model, learning_rate=model.learning_rate * factor)


def make_workers(cfg: ClusterConfig) -> Workers:
    """The workers of this job, from ``trainer.cluster`` (or TF_CONFIG); build before any other TF op.

    Raises ``PeerLostError`` naming the workers that did not come up within ``join_timeout_s``.
    """
    addresses, index = cluster_from_env(cfg)
    if len(addresses) <= 1:
        return Workers()
    log.info("worker %d of %d (%s); waiting up to %.0f s for every worker to join", index, len(addresses),
             addresses[index], cfg.join_timeout_s)
    collectives.rendezvous(addresses, index, cfg.join_timeout_s)
    # Every worker was up a moment ago; should one die before TensorFlow's join completes, that
    # join would wait forever: faulthandler's own thread (it needs no GIL) ends the process then.
    faulthandler.dump_traceback_later(cfg.join_timeout_s + 60, exit=True)
    try:
        workers = MultiWorkers(addresses, index, cfg)
    finally:
        faulthandler.cancel_dump_traceback_later()
    log.info("all %d workers joined", len(addresses))
    return workers
