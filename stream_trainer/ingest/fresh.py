"""Fresh rows: decoded messages that arrived and wait for their first training step.

The feeder thread (``feeder.py``) appends groups of decoded rows in arrival order; the batcher
takes rows out for a step. The buffer is bounded: when training falls behind it fills, the feeder
blocks, the decode pipeline and the inbox fill behind it, and the readers stop fetching.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass
class Rows:
    """Decoded rows and where each came from (numpy, leading dimension = rows)."""

    image: npt.NDArray[np.uint8]  # (n, S, S, 3)
    mask: npt.NDArray[np.uint8]  # (n, S, S, 1), classes 0..2
    partition: npt.NDArray[np.int32]  # (n,)
    offset: npt.NDArray[np.int64]  # (n,)
    prev: npt.NDArray[np.int64]  # (n,): the previous row's offset in the same partition (start - 1 for the first)
    produce_ts_ms: npt.NDArray[np.int64]  # (n,), 0 = unknown
    nbytes: npt.NDArray[np.int32]  # (n,): size of the message value
    arrived: npt.NDArray[np.float64]  # (n,): time.monotonic() when the row was decoded
    epoch: npt.NDArray[np.int32]  # (n,): the partition's offset chain the row belongs to (see feeder.py)

    def __len__(self) -> int:
        return int(self.offset.shape[0])

    def select(self, index: npt.NDArray[np.intp] | slice) -> Rows:
        return Rows(*(getattr(self, f)[index] for f in _FIELDS))

    @staticmethod
    def concat(parts: list[Rows]) -> Rows:
        if len(parts) == 1:
            return parts[0]
        return Rows(*(np.concatenate([getattr(p, f) for p in parts]) for f in _FIELDS))


_FIELDS = ("image", "mask", "partition", "offset", "prev", "produce_ts_ms", "nbytes", "arrived", "epoch")


class FreshRows:
    """A bounded, thread-safe FIFO of fresh rows."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._groups: deque[Rows] = deque()
        self._count = 0
        self._cond = threading.Condition()

    def __len__(self) -> int:
        with self._cond:
            return self._count

    def put(self, rows: Rows, stop: threading.Event) -> bool:
        """Append; block while full. False if ``stop`` was set while waiting."""
        with self._cond:
            while self._count >= self.capacity:
                if stop.is_set():
                    return False
                self._cond.wait(0.2)
            self._groups.append(rows)
            self._count += len(rows)
            self._cond.notify_all()
        return True

    def wait(self, count: int, deadline: float, overdue_s: float | None = None) -> int:
        """Wait until ``count`` rows are here, ``deadline`` (monotonic) passes, or (with
        ``overdue_s``) the oldest row has waited that long; return the rows available."""
        with self._cond:
            while self._count < count:
                now = time.monotonic()
                until = deadline
                if overdue_s is not None and self._groups:
                    until = min(until, float(self._groups[0].arrived[0]) + overdue_s)
                if now >= until:
                    break
                self._cond.wait(min(until - now, 0.05))
            return self._count

    def take(self, count: int, rng: np.random.Generator | None = None, window: int = 0,
             overdue_s: float = float("inf")) -> Rows | None:
        """Up to ``count`` rows: the oldest first, or (``rng`` and ``window``) overdue rows first and
        then a random choice among the oldest ``window`` rows."""
        with self._cond:
            if self._count == 0 or count <= 0:
                return None
            if rng is None or window <= count:
                taken = self._take_oldest(count)
            else:
                pool = self._take_oldest(min(window, self._count))
                now = time.monotonic()
                overdue = np.flatnonzero(now - pool.arrived >= overdue_s)
                rest = np.setdiff1d(np.arange(len(pool)), overdue)
                picked = np.concatenate([overdue, rng.permutation(rest)])[:count]
                keep = np.setdiff1d(np.arange(len(pool)), picked)
                if keep.size:  # the rest go back to the front, still oldest first
                    back = pool.select(keep)
                    self._groups.appendleft(back)
                    self._count += len(back)
                taken = pool.select(np.sort(picked))
            self._cond.notify_all()
            return taken

    def _take_oldest(self, count: int) -> Rows:
        parts: list[Rows] = []
        need = count
        while need > 0 and self._groups:
            head = self._groups[0]
            if len(head) <= need:
                parts.append(self._groups.popleft())
                need -= len(head)
            else:
                parts.append(head.select(slice(0, need)))
                self._groups[0] = head.select(slice(need, None))
                need = 0
        taken = Rows.concat(parts)
        self._count -= len(taken)
        return taken
