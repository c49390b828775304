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
* **Retired readers are refused under one lock.** A reader replaced by the watchdog may still
  wake up with a message; ``put`` checks, under the lock that ``retire`` takes, that the reader
  is still its partition's reader, and that the message is new (``ledger.py``).
"""

from __future__ import annotations

import threading
from collections import deque

import tensorflow as tf

from stream_trainer import metrics
from stream_trainer.ingest.inbox import Inbox
from stream_trainer.ingest.ledger import PartitionLedger
from stream_trainer.threads import Threads

# How long the pump waits for messages before it looks at the stop event again.
_POLL_S = 0.2


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
        self._staged: dict[int, deque[tuple[int, int, tf.Tensor]]] = {}  # partition -> (offset, epoch, value)
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

    def put(self, partition: int, reader: object, epoch: int, offset: int, value: tf.Tensor) -> bool:
        """Stage one message; block while the partition's share is full. False once ``reader`` was
        retired or the trainer stops (the reader then ends); a duplicate is skipped (True)."""
        with self._cond:
            staged = self._staged.setdefault(partition, deque())
            while len(staged) >= self.share and self._reader.get(partition) is reader and not self._stop.is_set():
                self._cond.wait(_POLL_S)
            if self._reader.get(partition) is not reader or self._stop.is_set():
                return False
            if self.ledger.read(partition, epoch, offset):
                staged.append((offset, epoch, value))
                self._cond.notify_all()
            return True

    def end(self) -> None:
        """Every bounded read is complete: the pump sends the end marker after what is staged."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    # -- the pump -----------------------------------------------------------------------------
    def _take(self) -> list[tuple[int, int, int, tf.Tensor]] | None:
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
            taken: list[tuple[int, int, int, tf.Tensor]] = []
            while len(taken) < self._group and order:
                for p in list(order):
                    q = self._staged[p]
                    if not q or len(taken) >= self._group:
                        order.remove(p)
                        continue
                    offset, epoch, value = q.popleft()
                    taken.append((p, offset, epoch, value))
            for p in {t[0] for t in taken}:
                mine = [(o, e) for q, o, e, _ in taken if q == p]
                for e in {e for _, e in mine}:
                    self.ledger.sent(p, [o for o, ee in mine if ee == e], e)
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
                    # Before the enqueue too: it blocks while the inbox is full, the state worth seeing.
                    metrics.INBOX_MESSAGES.set(self._left + len(taken) + self.inbox.size())
                    self.inbox.queue.enqueue_many([
                        tf.stack([v for _, _, _, v in taken]),
                        tf.constant([p for p, _, _, _ in taken], tf.int32),
                        tf.constant([o for _, o, _, _ in taken], tf.int64)])
                    metrics.INBOX_MESSAGES.set(self._left + self.inbox.size())

