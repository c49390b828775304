"""Timelines of a bounded read and the steady-state rate inside them.

Every contender records, each time it hands something over (a message batch, an image batch),
the time and the running count. The rate is taken between two of those moments: after the
first ``head`` items (connection, first fetch, tracing, a shuffle buffer filling) and before
the last ``tail`` (a shuffle buffer draining without reading anything), so it is the rate the
contender sustains, not its start-up or its end.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

from stream_trainer.errors import StreamTrainerError


class BenchError(StreamTrainerError):
    """A contender could not be measured (too few items in its timed window, a stalled read)."""


@dataclass(frozen=True)
class Rate:
    items_per_s: float
    bytes_per_s: float
    items: int  # counted inside the window
    seconds: float


@dataclass
class Timeline:
    """Running totals of items and bytes, stamped with ``time.perf_counter()``."""

    times: list[float] = field(default_factory=list)
    items: list[int] = field(default_factory=list)
    nbytes: list[int] = field(default_factory=list)

    def add(self, items: int, nbytes: int = 0) -> None:
        total = self.items[-1] if self.items else 0
        total_bytes = self.nbytes[-1] if self.nbytes else 0
        self.times.append(time.perf_counter())
        self.items.append(total + items)
        self.nbytes.append(total_bytes + nbytes)

    @property
    def total(self) -> int:
        return self.items[-1] if self.items else 0

    def rate(self, head: int, tail: int = 0) -> Rate:
        """Items/s and bytes/s from the first stamp with >= ``head`` items to the last with <= total - ``tail``."""
        end_limit = self.total - tail
        first = next((i for i, n in enumerate(self.items) if n >= head), None)
        last = next((i for i in range(len(self.items) - 1, -1, -1) if self.items[i] <= end_limit), None)
        if first is None or last is None or last <= first or self.times[last] <= self.times[first]:
            msg = (f"timed window is empty: {self.total} items read, skipping {head} at the head and {tail} at "
                   f"the tail; raise bench.messages")
            raise BenchError(msg)
        dt = self.times[last] - self.times[first]
        return Rate((self.items[last] - self.items[first]) / dt, (self.nbytes[last] - self.nbytes[first]) / dt,
                    self.items[last] - self.items[first], dt)


def summary(values: list[float]) -> dict[str, float | list[float]]:
    """Median plus min/max and every run, for the JSON report."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}
