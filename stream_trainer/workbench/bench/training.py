"""Training fed live against training fed from memory: does input ever hold the step back?

Both runs use the trainer's own parts: the dtype policy ``precision.apply`` picks, the U-Net,
``make_replica_step`` compiled by ``Workers`` (one worker), and batches assembled by the
``Batcher``; the outputs are fetched every step, as ``TrainLoop._step`` does. Replay is off in
both, so they train the same rows. The live run reads Kafka through ``KafkaSource`` and decodes
while it trains; the memory run replays batches assembled and cached beforehand, so it costs no
decoding at all. Input wait is the time between the end of one step and the next batch.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy.typing as npt

from stream_trainer.config import Settings
from stream_trainer.ingest.inbox import Inbox
from stream_trainer.learn import precision
from stream_trainer.learn.batcher import Batch
from stream_trainer.learn.model import build_optimizer, build_unet
from stream_trainer.learn.step import make_replica_step
from stream_trainer.learn.workers import Workers
from stream_trainer.tfenv import TENSORFLOW_IO
from stream_trainer.workbench.bench.contenders import Context, kafka_source, trainer_batches
from stream_trainer.workbench.bench.sources import MemorySource
from stream_trainer.workbench.bench.timing import BenchError
from stream_trainer.workbench.bench.workload import Workload


@dataclass(frozen=True)
class TrainRun:
    steps_per_s: float
    images_per_s: float
    mean_input_wait_s: float
    max_input_wait_s: float


class Trainer:
    """One model, optimizer and compiled step, as ``app.run_trainer`` builds them for one worker."""

    def __init__(self, settings: Settings) -> None:
        t = settings.trainer
        self.policy = precision.apply(t.model.precision)
        self.workers = Workers()
        self.model = build_unet(t.pipeline.image_size, t.model)
        self.optimizer = build_optimizer(t.model)
        self.workers.compile_step(make_replica_step(self.model, self.optimizer, t.pipeline.image_size,
                                                    t.pipeline.flip), t.pipeline.image_size)

    def step(self, batch: Batch) -> dict[str, npt.NDArray[Any]]:
        """One step on ``batch``, every row counted (a worker alone: the step's weight is its own)."""
        return self.workers.step(batch.image, batch.mask, batch.weight, batch.fresh, float(batch.n_rows))


class _Steps:
    """``on_batch`` for ``trainer_batches``: steps on the first ``warmup + steps`` batches, times the last ``steps``."""

    def __init__(self, trainer: Trainer, warmup: int, steps: int) -> None:
        self.trainer, self.warmup, self.steps = trainer, warmup, steps
        self.done = 0
        self.images = 0
        self.waits: list[float] = []
        self.started = self.ended = 0.0
        self._last = time.perf_counter()

    def __call__(self, batch: Batch) -> None:
        if self.done >= self.warmup + self.steps:
            return  # the rest of a bounded read is drained so that its readers end
        waited = time.perf_counter() - self._last
        self.trainer.step(batch)
        self.done += 1
        if self.done == self.warmup:
            self.started = time.perf_counter()
        elif self.done > self.warmup:
            self.waits.append(waited)
            self.images += batch.n_rows
        self.ended = self._last = time.perf_counter()

    def result(self) -> TrainRun:
        if self.done < self.warmup + self.steps:
            msg = (f"the input ran out after {self.done} of {self.warmup + self.steps} training steps; "
                   f"raise bench.messages")
            raise BenchError(msg)
        elapsed = self.ended - self.started
        return TrainRun(self.steps / elapsed, self.images / elapsed, sum(self.waits) / len(self.waits),
                        max(self.waits))


def live(ctx: Context, trainer: Trainer, w: Workload, reader: str = TENSORFLOW_IO) -> TrainRun:
    """``reader``'s source -> inbox -> decoded_groups -> Feeder -> Batcher -> step, on ``w.topic``."""
    b = ctx.bench
    count = min(len(w.values), (b.train_warmup_steps + b.train_steps + 1) * ctx.settings.trainer.pipeline.batch_size)
    steps = _Steps(trainer, b.train_warmup_steps, b.train_steps)
    inbox = Inbox(ctx.settings.trainer.source.queue_capacity)
    stop = threading.Event()
    src = kafka_source(ctx, w, inbox, stop, "train", reader)
    trainer_batches(ctx, inbox, w.starts(), lambda: src.start(w.starts(), w.stops(count)), steps, stop)
    return steps.result()


def memory(trainer: Trainer, batches: list[Batch], warmup: int, steps: int) -> TrainRun:
    """The same steps on batches assembled beforehand: no decoding while training."""
    timed = _Steps(trainer, warmup, steps)
    for batch in batches[:warmup + steps]:
        timed(batch)
    return timed.result()


def cached_batches(ctx: Context, w: Workload) -> list[Batch]:
    """Batches our pipeline assembles from ``w``'s messages in memory, kept for the memory runs."""
    b = ctx.bench
    need = b.train_warmup_steps + b.train_steps
    count = min(len(w.values), (need + 1) * ctx.settings.trainer.pipeline.batch_size)
    inbox = Inbox(ctx.settings.trainer.source.queue_capacity)
    batches: list[Batch] = []
    trainer_batches(ctx, inbox, w.starts(), MemorySource(inbox, w.per_partition(count)).start, batches.append)
    if len(batches) < need:
        msg = f"only {len(batches)} batches from {count} messages, {need} needed; raise bench.messages"
        raise BenchError(msg)
    return batches


def live_and_memory(ctx: Context, trainer: Trainer, w: Workload, batches: list[Batch], memory_first: bool,
                    readers: tuple[str, ...] = (TENSORFLOW_IO,)) -> tuple[dict[str, TrainRun], TrainRun]:
    """One live run per reader and one memory run; rounds alternate which goes first, so a drift
    in the machine's background load does not always land on the same side of the ratio."""
    b = ctx.bench
    if memory_first:
        mem = memory(trainer, batches, b.train_warmup_steps, b.train_steps)
        return {r: live(ctx, trainer, w, r) for r in readers}, mem
    runs = {r: live(ctx, trainer, w, r) for r in readers}
    return runs, memory(trainer, batches, b.train_warmup_steps, b.train_steps)
