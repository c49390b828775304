"""The pieces of the learning scenario: the phased stream as read back, one training run, replay's cost.

Kept apart from ``learning.py`` (the story and the targets) so that each file owns one thing.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from stream_trainer import wire
from stream_trainer.config import Settings
from stream_trainer.ingest import pipeline
from stream_trainer.ingest.fresh import FreshRows, Rows
from stream_trainer.ingest.inbox import Inbox
from stream_trainer.kafka import Cluster
from stream_trainer.learn.batcher import Batch, Batcher
from stream_trainer.quality.evaluate import Classify, classifier, confusion, read_eval_messages, scores
from stream_trainer.workbench.bench import machine
from stream_trainer.workbench.bench.contenders import Context, kafka_source, trainer_batches
from stream_trainer.workbench.bench.freshness import replay_store
from stream_trainer.workbench.bench.timing import BenchError, round_order
from stream_trainer.workbench.bench.training import Trainer
from stream_trainer.workbench.bench.workload import Workload

log = logging.getLogger(__name__)


def plateaued(history: list[float], patience: int, min_delta: float) -> bool:
    """True when none of the last ``patience`` scores beat the best before them by ``min_delta``."""
    if len(history) <= patience:
        return False
    return max(history[-patience:]) < max(history[:-patience]) + min_delta

EVAL_BATCH = 64


@dataclass
class Stream:
    """The train topic's layout (A at ``start..b_start``, B at ``b_start..end``, partition 0) and
    each phase's eval images, decoded once."""

    topic: str
    start: int
    b_start: int
    end: int
    phases: tuple[str, str]
    train_values: list[bytes]
    eval_values: dict[str, list[bytes]]
    eval_batches: dict[str, list[dict[str, tf.Tensor]]] = field(default_factory=dict)

    @classmethod
    def read(cls, cluster: Cluster, s: Settings, a: str, b: str) -> Stream:
        """Read both topics back; check that the producer sent every A image before every B image."""
        topic = s.topics.train
        marks = cluster.watermarks(topic, [0])[0]
        messages = cluster.read_range(topic, 0, marks.low, marks.high)
        phases = [wire.phase_of(wire.decode(m.value() or b"")[0].source) for m in messages]
        b_start = marks.low + phases.index(b) if b in phases else marks.high
        if phases != [a] * (b_start - marks.low) + [b] * (marks.high - b_start) or b_start == marks.low:
            msg = f"{topic} does not hold phase {a}'s images and then phase {b}'s (found {sorted(set(phases))})"
            raise BenchError(msg)
        evals: dict[str, list[bytes]] = {a: [], b: []}
        for m in read_eval_messages(cluster, s.topics.eval, 10**6, 10.0):
            evals.setdefault(wire.phase_of(wire.decode(m.value)[0].source), []).append(m.value)
        if not evals[a] or not evals[b]:
            msg = f"the eval topic {s.topics.eval} lacks images of phase {a} or {b}; raise bench.learning.eval_fraction"
            raise BenchError(msg)
        size = s.trainer.pipeline.image_size
        batches = {k: [{"image": x["image"], "mask": x["mask"]} for x in pipeline.decode_values(v, size, EVAL_BATCH)]
                   for k, v in evals.items() if k in (a, b)}
        return cls(topic, marks.low, b_start, marks.high, (a, b), [m.value() or b"" for m in messages], evals,
                   batches)

    def iou(self, classify: Classify, phase: str) -> float:
        cm, _ = confusion(classify, self.eval_batches[phase])
        return scores(cm)[0]


class _Run:
    """``on_batch`` for ``trainer_batches``: step, account as ``Accountant.trained`` does, evaluate on schedule."""

    def __init__(self, ctx: Context, stream: Stream, trainer: Trainer, replay: bool) -> None:
        self.lc = ctx.bench.learning
        self.stream, self.trainer = stream, trainer
        self.classify = classifier(trainer.model)  # traced once for the run's evaluations
        self.store = replay_store(ctx) if replay else None
        self.images = self.replayed = self.steps = 0
        self.step_s = 0.0
        self.phase = stream.phases[0]
        self.stopped = False  # phase A plateaued: the rest of its bounded read is drained untrained
        self.next_eval = self.lc.eval_every_images
        self.evals: list[dict[str, Any]] = []
        self.evaluate()

    def evaluate(self) -> None:
        a, b = self.stream.phases
        e = {"images": self.images, "phase": self.phase, a: self.stream.iou(self.classify, a),
             b: self.stream.iou(self.classify, b), "rss_mib": machine.rss_mib()}
        self.evals.append(e)
        log.info("%s replay, training %s, %5d fresh images: IoU on %s %.3f, on %s %.3f",
                 "with" if self.store is not None else "without", self.phase, self.images, a, e[a], b, e[b])

    def __call__(self, batch: Batch) -> None:
        if self.stopped:
            return
        t0 = time.perf_counter()
        self.trainer.step(batch)
        rows = batch.rows
        assert rows is not None
        if self.store is not None:
            self.store.add(rows.image, rows.mask, rows.partition, rows.offset)
        self.step_s += time.perf_counter() - t0
        self.steps += 1
        self.images += batch.n_fresh
        self.replayed += batch.n_rows - batch.n_fresh
        if self.images >= self.next_eval:
            self.next_eval += self.lc.eval_every_images
            self.evaluate()

    def train(self, ctx: Context, first: int, count: int, until_plateau: bool) -> None:
        """Train on offsets ``first .. first+count`` of the stream (stopping early at A's plateau)."""
        inbox = Inbox(ctx.settings.trainer.source.queue_capacity)
        stop = threading.Event()
        src = kafka_source(ctx, Workload(self.stream.topic, 1, []), inbox, stop, "learn")
        a = self.stream.phases[0]

        def on_batch(batch: Batch) -> None:
            evaluated = len(self.evals)
            self(batch)
            if until_plateau and len(self.evals) > evaluated:
                self.stopped = plateaued([e[a] for e in self.evals], self.lc.patience, self.lc.min_delta)

        trainer_batches(ctx, inbox, {0: first}, lambda: src.start({0: first}, {0: first + count}), on_batch, stop,
                        self.store)
        if self.evals[-1]["images"] != self.images:
            self.evaluate()  # every phase ends with an evaluation


def train_run(ctx: Context, stream: Stream, trainer: Trainer, replay: bool, a_images: int | None) -> dict[str, Any]:
    """Phase A (until its plateau, or exactly ``a_images`` fresh images), then as many of phase B."""
    run = _Run(ctx, stream, trainer, replay)
    a, b = stream.phases
    run.train(ctx, stream.start, a_images or stream.b_start - stream.start, until_plateau=a_images is None)
    plateau = run.stopped
    n_a = run.images
    run.phase, run.stopped, run.next_eval = b, False, n_a + run.lc.eval_every_images
    n_b = min(n_a, stream.end - stream.b_start)
    run.train(ctx, stream.b_start, n_b, until_plateau=False)
    a_evals = [e for e in run.evals if e["phase"] == a]
    rss = [e["rss_mib"] for e in run.evals[1:]]
    return {
        "replay": replay, "precision": trainer.policy, "a_images": n_a, "b_images": run.images - n_a,
        "a_plateau_reached": plateau, "replayed": run.replayed, "steps": run.steps,
        "steps_per_s": run.steps / run.step_s if run.step_s else 0.0,
        "a_peak": max(e[a] for e in a_evals), "a_after_a": a_evals[-1][a], "b_after_a": a_evals[-1][b],
        "a_after_b": run.evals[-1][a], "b_after_b": run.evals[-1][b],
        "store_members": len(run.store) if run.store is not None else 0,
        "rss_growth_mib": rss[-1] - rss[0] if rss else 0.0,
        "evals": run.evals,
    }


def _rows(values: list[bytes], image_size: int) -> Rows:
    """Messages decoded by the trainer's code into fresh rows (offsets = list positions)."""
    parts = list(pipeline.decode_values(values, image_size, 256))
    offset = np.concatenate([p["offset"].numpy() for p in parts])
    n = offset.shape[0]
    return Rows(image=np.concatenate([p["image"].numpy() for p in parts]),
                mask=np.concatenate([p["mask"].numpy() for p in parts]), partition=np.zeros(n, np.int32),
                offset=offset, prev=offset - 1, produce_ts_ms=np.zeros(n, np.int64),
                nbytes=np.concatenate([p["nbytes"].numpy() for p in parts]), arrived=np.full(n, time.monotonic()),
                epoch=np.zeros(n, np.int32))


def replay_cost(ctx: Context, stream: Stream, trainer: Trainer) -> dict[str, Any]:
    """Steps/s with the store as configured against without, same batch size, interleaved rounds."""
    lc, t = ctx.bench.learning, ctx.settings.trainer
    need = (lc.cost_steps + 1) * t.pipeline.batch_size
    rows = _rows(stream.train_values[:need], t.pipeline.image_size)
    if len(rows) < need:
        msg = f"replay cost needs {need} decodable messages, the stream has {len(rows)}; raise the phases' images"
        raise BenchError(msg)
    store = replay_store(ctx)
    if store is None:
        msg = "the replay cost needs a replay store: trainer.replay.size_mib is 0"
        raise BenchError(msg)
    store.add(rows.image, rows.mask, rows.partition, rows.offset)
    rates: dict[bool, list[float]] = {True: [], False: []}
    for round_ in range(lc.cost_rounds):
        for with_replay in round_order((True, False), round_):
            fresh = FreshRows(len(rows))
            fresh.put(rows, threading.Event())
            batcher = Batcher(fresh, store if with_replay else None, t.pipeline, t.replay, t.pipeline.image_size)
            trainer.step(_next(batcher))  # untimed: the first step after a switch pays for nothing else
            t0 = time.perf_counter()
            for _ in range(lc.cost_steps):
                batch = _next(batcher)
                trainer.step(batch)
                if with_replay and batch.rows is not None:
                    store.add(batch.rows.image, batch.rows.mask, batch.rows.partition, batch.rows.offset)
            rates[with_replay].append(lc.cost_steps / (time.perf_counter() - t0))
    ratios = [x / y for x, y in zip(rates[True], rates[False], strict=True)]
    return {"batch_size": t.pipeline.batch_size, "steps": lc.cost_steps, "rounds": lc.cost_rounds,
            "with_replay_steps_per_s": rates[True], "without_replay_steps_per_s": rates[False],
            "ratio": {"median": statistics.median(ratios), "rounds": ratios},
            "store_bytes": store.nbytes, "store_capacity": store.capacity, "configured_mib": t.replay.size_mib}


def _next(batcher: Batcher) -> Batch:
    batch = batcher.next(0.0)
    if batch is None:
        msg = "the replay-cost rows ran out"
        raise BenchError(msg)
    return batch
