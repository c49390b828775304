"""The accountant: what each trained or dropped message means for the positions.

Fresh rows carry where they came from (partition, offset, the previous row of their partition,
the partition's epoch). Once a step trained them, each one moves its partition's chain forward
(``state/progress.py``): directly when it follows its predecessor, or through the dead-letter
worker when messages are missing before it (they were dropped by the decoder, or never were
messages: transaction markers), which re-reads, publishes and only then marks the hole. A
message the decode pipeline reports as dropped (``dropped``) goes the same way without waiting
for a later row. Replayed rows were accounted for when they were fresh: they never move a
position. The accountant also feeds the replay store, writes the trained log, and counts what
was consumed and how late it arrived.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path
from typing import IO

from stream_trainer import metrics
from stream_trainer.ingest.fresh import Rows
from stream_trainer.learn.batcher import Batch
from stream_trainer.learn.replay import ReplayStore
from stream_trainer.quality.deadletter import DeadLetterWorker
from stream_trainer.state.progress import OffsetTracker

log = logging.getLogger(__name__)


class Accountant:
    """Positions, epochs, dead-letter holes and the trained log of one worker.

    ``trained`` is called by the loop; ``dropped`` may be called from any thread (the decode
    pipeline's feeder): it touches only the tracker and the dead-letter queue, both thread-safe.
    """

    def __init__(self, topic: str, tracker: OffsetTracker, dead_letters: DeadLetterWorker,
                 replay: ReplayStore | None, trained_log: str = "") -> None:
        self.topic = topic
        self.tracker = tracker
        self.dead_letters = dead_letters
        self.replay = replay
        self._log: IO[str] | None = None
        if trained_log:
            Path(trained_log).parent.mkdir(parents=True, exist_ok=True)
            self._log = open(trained_log, "a")  # noqa: SIM115 - closed in close()

    def trained(self, batch: Batch, step: int) -> tuple[int, int]:
        """``batch`` was trained at ``step``: account for its rows; (fresh, replayed) counts."""
        replayed = batch.n_rows - batch.n_fresh
        metrics.IMAGES_REPLAYED.inc(replayed)
        rows = batch.rows
        if rows is None or not len(rows):
            return 0, replayed
        self._fresh(rows, step)
        return len(rows), replayed

    def dropped(self, partition: int, prev: int, offset: int, epoch: int) -> None:
        """The message at ``offset`` will never be a row (the decoder rejected it); ``prev`` is the
        last message of the partition before it. Dead-letter (prev, offset], then mark it handled."""
        self.dead_letters.submit(self.topic, partition, prev + 1, offset + 1,
                                 partial(self.tracker.handled, partition, prev, offset, epoch),
                                 partial(self.tracker.is_current, partition, epoch))

    def _fresh(self, rows: Rows, step: int) -> None:
        n = len(rows)
        metrics.IMAGES_TRAINED.inc(n)
        metrics.MESSAGES_CONSUMED.labels(self.topic).inc(n)
        metrics.BYTES_CONSUMED.labels(self.topic).inc(int(rows.nbytes.sum()))
        parts, offsets = rows.partition.tolist(), rows.offset.tolist()
        for p, prev, off, epoch in zip(parts, rows.prev.tolist(), offsets, rows.epoch.tolist(), strict=True):
            if off == prev + 1:
                self.tracker.handled(p, prev, off, epoch)
            else:  # messages missing before this row: (prev, off) to the dead letters, then the link
                self.dead_letters.submit(self.topic, p, prev + 1, off,
                                         partial(self.tracker.handled, p, prev, off, epoch),
                                         partial(self.tracker.is_current, p, epoch))
        now_ms = time.time() * 1000.0
        for ts in rows.produce_ts_ms.tolist():
            if ts > 0:
                metrics.LATENCY_SECONDS.observe(max(0.0, (now_ms - ts) / 1000.0))
        if self.replay is not None:
            self.replay.add(rows.image, rows.mask, rows.partition, rows.offset)
            metrics.REPLAY_MEMBERS.set(len(self.replay))
        if self._log is not None:
            self._log.write("".join(f"{p} {o} {step}\n" for p, o in zip(parts, offsets, strict=True)))
            self._log.flush()

    def settle(self, timeout_s: float = 5.0) -> None:
        """Let pending dead-letter holes land (bounded), so final positions move past them."""
        deadline = time.monotonic() + timeout_s
        while not self.dead_letters.idle() and time.monotonic() < deadline:
            time.sleep(0.05)

    @property
    def dead_lettered(self) -> int:
        return self.dead_letters.sent

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
