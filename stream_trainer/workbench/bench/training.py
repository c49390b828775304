"""Contender 7: the same model and batch size trained from Kafka and from memory.

Both runs go through the trainer's own parts: the ``Feeder`` thread, ``make_train_step``, a
loss fetched every step (as ``TrainLoop._step`` does). The memory run replays batches the
in-memory pipeline made and cached beforehand, so it costs no decoding at all; the ratio of the
two says whether input ever limits training on this machine. Input wait is the time the loop
spent in ``Feeder.get`` before each step.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import tensorflow as tf

from stream_trainer import pipeline, source
from stream_trainer.workbench.bench.contenders import Context, group_id, memory_reader
from stream_trainer.workbench.bench.timing import BenchError
from stream_trainer.feeder import Feeder
from stream_trainer.loop import make_train_step
from stream_trainer.model import build_optimizer, build_unet

BATCH_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class TrainRun:
    steps_per_s: float
    images_per_s: float
    mean_input_wait_s: float
    max_input_wait_s: float


class Trainer:
    """One model, optimizer and compiled step, shared by every training run of the benchmark."""

    def __init__(self, ctx: Context) -> None:
        t = ctx.settings.trainer
        self.model = build_unet(t.pipeline.image_size, t.model)
        self.step = make_train_step(self.model, build_optimizer(t.model))

    def run(self, make_dataset: Callable[[], tf.data.Dataset], warmup: int, steps: int) -> TrainRun:
        """Train on ``warmup + steps`` batches from a Feeder; time the last ``steps``; drain the rest."""
        stop = threading.Event()
        feeder = Feeder(make_dataset, stop).start()
        waits: list[float] = []
        started = 0.0
        images = 0
        try:
            for n in range(warmup + steps):
                t0 = time.perf_counter()
                batch = _get(feeder, BATCH_TIMEOUT_S)
                waited = time.perf_counter() - t0
                float(self.step(batch["image"], batch["mask"]))  # fetching the loss waits for the step
                if n == warmup - 1:
                    started = time.perf_counter()
                elif n >= warmup:
                    waits.append(waited)
                    images += int(batch["image"].shape[0])
            elapsed = time.perf_counter() - started
            # Let a bounded dataset run out so its reader ends and closes before the next run starts.
            while _get(feeder, BATCH_TIMEOUT_S, allow_end=True) is not None:
                pass
        finally:
            stop.set()
        return TrainRun(steps / elapsed, images / elapsed, sum(waits) / len(waits), max(waits))


def _get(feeder: Feeder, timeout_s: float, allow_end: bool = False) -> dict[str, tf.Tensor] | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        batch = feeder.get(timeout_s=0.25)
        if batch is not None:
            return batch
        if feeder.exhausted.is_set():
            if allow_end:
                return None
            msg = "the input ran out before the planned number of training steps; raise bench.messages"
            raise BenchError(msg)
    msg = f"no training batch for {timeout_s:.0f} s: the input pipeline stalled"
    raise BenchError(msg)


def live_and_memory(ctx: Context, trainer: Trainer, memory_batches: tf.data.Dataset,
                    memory_first: bool = False) -> tuple[TrainRun, TrainRun]:
    """One live run (Kafka -> pipeline -> Feeder -> step) and one run from cached batches.

    Rounds alternate which goes first, so a drift in the machine's background load does not
    always land on the same side of the ratio.
    """
    b, t = ctx.bench, ctx.settings.trainer
    w = ctx.workload
    batch = t.pipeline.batch_size
    # Enough messages for every step plus one shuffle buffer: timed steps never see the drain.
    count = min(len(w.values), (b.train_warmup_steps + b.train_steps + math.ceil(t.pipeline.shuffle_buffer / batch))
                * batch)

    def live() -> tf.data.Dataset:
        read = source.partition_reader(ctx.settings.kafka, w.topic, t.source.poll_timeout_ms, group_id("train"),
                                       stop_offsets=w.stops(count))
        return pipeline.train_batches(pipeline.decoded_partitions(read, w.starts(), t.pipeline.image_size),
                                      t.pipeline)

    if memory_first:
        memory_run = trainer.run(lambda: memory_batches, b.train_warmup_steps, b.train_steps)
        live_run = trainer.run(live, b.train_warmup_steps, b.train_steps)
    else:
        live_run = trainer.run(live, b.train_warmup_steps, b.train_steps)
        memory_run = trainer.run(lambda: memory_batches, b.train_warmup_steps, b.train_steps)
    return live_run, memory_run


def cached_memory_batches(ctx: Context) -> tf.data.Dataset:
    """Training batches from the in-memory pipeline, materialised once: replaying them costs nothing."""
    b, t = ctx.bench, ctx.settings.trainer
    need = b.train_warmup_steps + b.train_steps
    w = ctx.workload
    decoded = pipeline.decoded_partitions(memory_reader(w, len(w.values)), w.starts(), t.pipeline.image_size)
    batches = [elem for elem in pipeline.train_batches(decoded, t.pipeline).take(need)]
    if len(batches) < need:
        msg = f"only {len(batches)} batches from {len(w.values)} messages, {need} needed; raise bench.messages"
        raise BenchError(msg)
    return tf.data.Dataset.from_tensor_slices(
        {k: tf.stack([x[k] for x in batches]) for k in batches[0]}).prefetch(2)
