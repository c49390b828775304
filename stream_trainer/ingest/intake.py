"""The readers' side of the inbox: a bounded share per partition, handed over in turn.

Readers put messages here from Python; one pump thread moves them into the inbox's TensorFlow
queue (``inbox.py``), which the decode pipeline takes from. Why not straight into that queue:

* **Fairness.** One FIFO fills in whatever order the readers happen to run: after a restart with
  a backlog, the first reader to connect filled it alone and one partition trained for dozens of
  steps while the others did not move. The pump takes from every partition with messages in
  turn, so every partition's rows reach the batches (and the replay store) from the first group.
* **Bounded per partition.** Each partition may stage at most ``share`` messages; its reader
  blocks beyond that, and librdkafka's own read-ahead is bounded too (``reader.py``). The memory
  a worker needs grows with its partition count by a known amount per partition
  (docs/operations.md), not by whatever a fast partition manages to read.
* **Blocking or not, as the reader needs.** A tensorflow-io reader owns a thread per partition
  and blocks in ``put``; the confluent-kafka reader feeds every partition from one thread, so it
  ``offer``s instead and pauses a partition whose share is full (``consumer.py``).
* **Retired readers are refused under one lock.** A reader replaced by the watchdog may still
  wake up with a message; ``put`` checks, under the lock that ``retire`` takes, that the reader
  is still its partition's reader, and that the message is new (``ledger.py``).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import TypeAlias

import tensorflow as tf

from stream_trainer import metrics
from stream_trainer.ingest.inbox import Inbox
from stream_trainer.ingest.ledger import PartitionLedger
from stream_trainer.threads import Threads

# How long the pump waits for messages before it looks at the stop event again.
_POLL_S = 0.2

Value: TypeAlias = tf.Tensor | bytes


class Intake:
    """Per-partition bounded staging, a round-robin pump into ``inbox``; thread-safe."""

    def __init__(self, inbox: Inbox, ledger: PartitionLedger, share: int, group: int, stop: threading.Event,
                 threads: Threads) -> None:
        self.inbox = inbox
        self.ledger = ledger
        self.share = share
        self._group = group
        self._stop = stop
        self._threads = threads
        self._cond = threading.Condition()
        # partition -> (offset, epoch, value, CreateTime in ms or 0); a value is a tensor or the bytes
        # themselves (one tf.constant per hand-over then, not one per message).
        self._staged: dict[int, deque[tuple[int, int, Value, int]]] = {}
        self._reader: dict[int, object] = {}  # partition -> the reader allowed to put
        self._next = 0  # round-robin cursor over partitions
        self._left = 0  # staged after the pump's last take: with the inbox's size, the inbox gauge
        self._ended = False
        self._pump: threading.Thread | None = None

    def start(self) -> Intake:
        if self._pump is None:
            self._pump = self._threads.start("inbox-pump", self._run)
        return self

    # -- the readers' side --------------------------------------------------------------------
    def install(self, partition: int, reader: object, start: int, *, only_if_current: bool = False) -> int | None:
        """``reader`` now reads ``partition`` from ``start``; the previous one is retired. Return the
        epoch (a new one when ``start`` moves back: staged messages then go). With
        ``only_if_current`` (a failed reader resuming), None if it was retired meanwhile."""
        with self._cond:
            if only_if_current and self._reader.get(partition) is not reader:
                return None
            epoch = self.ledger.reposition(partition, start)
            staged = self._staged.setdefault(partition, deque())
            if staged and staged[0][1] != epoch:
                staged.clear()
            self._reader[partition] = reader
            self._cond.notify_all()
            return epoch

    def retire(self, partition: int, reader: object) -> None:
        """``reader`` may put nothing more (it may still be blocked in tensorflow-io)."""
        with self._cond:
            if self._reader.get(partition) is reader:
                del self._reader[partition]
            self._cond.notify_all()

    def is_current(self, partition: int, reader: object) -> bool:
        with self._cond:
            return self._reader.get(partition) is reader

    def staged(self, partition: int) -> int:
        with self._cond:
            return len(self._staged.get(partition, ()))

    def full(self, partition: int) -> bool:
        """The partition's share is full: its reader waits for decoding, it is not stalled."""
        with self._cond:
            return len(self._staged.get(partition, ())) >= self.share

    def put(self, partition: int, reader: object, epoch: int, offset: int, value: Value,
            created_ms: int = 0) -> bool:
        """Stage one message; block while the partition's share is full. False once ``reader`` was
        retired or the trainer stops (the reader then ends); a duplicate is skipped (True).
        ``created_ms``: the record's CreateTime where the reader knows it (0 = unknown)."""
        with self._cond:
            staged = self._staged.setdefault(partition, deque())
            while len(staged) >= self.share and self._reader.get(partition) is reader and not self._stop.is_set():
                self._cond.wait(_POLL_S)
            return self._stage(partition, reader, epoch, offset, value, created_ms)

    def offer(self, partition: int, reader: object, epoch: int, offset: int, value: Value,
              created_ms: int = 0) -> bool | None:
        """``put`` without waiting: None (nothing staged) while the partition's share is full."""
        with self._cond:
            if len(self._staged.setdefault(partition, deque())) >= self.share:
                return None
            return self._stage(partition, reader, epoch, offset, value, created_ms)

    def _stage(self, partition: int, reader: object, epoch: int, offset: int, value: Value, created_ms: int) -> bool:
        if self._reader.get(partition) is not reader or self._stop.is_set():
            return False
        if self.ledger.read(partition, epoch, offset):
            self._staged[partition].append((offset, epoch, value, created_ms))
            self._cond.notify_all()
        return True

    def wait_for_room(self, partitions: list[int], below: int, timeout_s: float) -> None:
        """Wait until one of ``partitions`` stages at most ``below`` messages, or ``timeout_s`` passed."""
        with self._cond:
            self._cond.wait_for(lambda: self._stop.is_set() or any(
                len(self._staged.get(p, ())) <= below for p in partitions), timeout_s)

    def end(self) -> None:
        """Every bounded read is complete: the pump sends the end marker after what is staged."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    # -- the pump -----------------------------------------------------------------------------
    def _take(self) -> list[tuple[int, int, int, Value, int]] | None:
        """Up to ``group`` staged messages, one partition after another; [] on a quiet poll, None at the end."""
        with self._cond:
            while not any(self._staged.values()):
                if self._ended:
                    return None
                if self._stop.is_set() or not self._cond.wait(_POLL_S):
                    return []
            parts = sorted(p for p, q in self._staged.items() if q)
            start = self._next % len(parts)
            order = parts[start:] + parts[:start]
            self._next += 1
            taken: list[tuple[int, int, int, Value, int]] = []
            while len(taken) < self._group and order:
                for p in list(order):
                    q = self._staged[p]
                    if not q or len(taken) >= self._group:
                        order.remove(p)
                        continue
                    offset, epoch, value, created = q.popleft()
                    taken.append((p, offset, epoch, value, created))
            for p in {t[0] for t in taken}:
                mine = [(o, e, c) for q, o, e, _, c in taken if q == p]
                for e in {e for _, e, _ in mine}:
                    self.ledger.sent(p, [o for o, ee, _ in mine if ee == e], e, [c for _, ee, c in mine if ee == e])
            self._left = sum(len(q) for q in self._staged.values())
            self._cond.notify_all()
            return taken

    def _run(self) -> None:
        with tf.device("/CPU:0"):
            while not self._stop.is_set():
                taken = self._take()
                if taken is None:
                    self.inbox.put_end()
                    return
                if taken:
                    values = [v for _, _, _, v, _ in taken]
                    # Before the enqueue too: it blocks while the inbox is full, the state worth seeing.
                    metrics.INBOX_MESSAGES.set(self._left + len(taken) + self.inbox.size())
                    self.inbox.queue.enqueue_many([
                        tf.constant(values, tf.string) if all(isinstance(v, bytes) for v in values)
                        else tf.stack([tf.convert_to_tensor(v, tf.string) for v in values]),
                        tf.constant([p for p, _, _, _, _ in taken], tf.int32),
                        tf.constant([o for _, o, _, _, _ in taken], tf.int64)])
                    metrics.INBOX_MESSAGES.set(self._left + self.inbox.size())

