"""Timelines of a bounded read and the steady-state rate inside them.

Every contender records, each time it hands something over (a message batch, an image batch),
the time, the process's CPU time and the running count. The rate is taken between two of those
moments: after the first ``head`` items (connection, first fetch, tracing) and before the last
``tail`` (a partial batch waiting out ``max_batch_wait_ms`` at the end of a bounded read), so it
is the rate the contender sustains, not its start-up or its end.

Our pipeline hands over in bursts: a decoded group of up to 64 rows becomes four batches within
a fraction of a millisecond, then nothing while the next group decodes. A window edge in the
middle of a burst would count items without the time they took (up to a group at each end,
2 % of a 3000-message read); both edges therefore move to the end of their burst, so the
window holds whole bursts and the time between them. CPU seconds per item come from
the same two moments: ``time.process_time()`` counts every thread of this process (tf.data's
decoders, the Kafka readers), the broker runs in another process and is not counted.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from stream_trainer.errors import StreamTrainerError

T = TypeVar("T")

# Hand-overs closer together than this (and than a quarter of the mean gap) are one burst.
BURST_S = 0.002


class BenchError(StreamTrainerError):
    """A contender could not be measured (too few items in its timed window, a stalled read)."""


def round_order(contenders: Sequence[T], round_: int) -> list[T]:
    """The order interleaved contenders run in round ``round_``: reversed every other round, so
    that none always runs first (on a cold cache) or right after the same neighbour."""
    return list(contenders) if round_ % 2 == 0 else list(reversed(contenders))


@dataclass(frozen=True)
class Rate:
    items_per_s: float
    bytes_per_s: float
    items: int  # counted inside the window
    seconds: float
    cpu_s_per_item: float  # process CPU time inside the window / items


@dataclass
class Timeline:
    """Running totals of items and bytes, stamped with ``time.perf_counter()`` and ``time.process_time()``."""

    times: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    items: list[int] = field(default_factory=list)
    nbytes: list[int] = field(default_factory=list)

    def add(self, items: int, nbytes: int = 0) -> None:
        total = self.items[-1] if self.items else 0
        total_bytes = self.nbytes[-1] if self.nbytes else 0
        self.times.append(time.perf_counter())
        self.cpu.append(time.process_time())
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
        gap = min(BURST_S, 0.25 * (self.times[last] - self.times[first]) / (last - first))
        first, last = self._burst_end(first, gap), self._burst_end(last, gap)
        if last <= first:
            msg = f"timed window is one burst of {self.total} items; raise bench.messages"
            raise BenchError(msg)
        dt = self.times[last] - self.times[first]
        items = self.items[last] - self.items[first]
        cpu = (self.cpu[last] - self.cpu[first]) / items if self.cpu else float("nan")
        return Rate(items / dt, (self.nbytes[last] - self.nbytes[first]) / dt, items, dt, cpu)

    def _burst_end(self, i: int, gap: float) -> int:
        while i + 1 < len(self.times) and self.times[i + 1] - self.times[i] < gap:
            i += 1
        return i


def summary(values: list[float]) -> dict[str, float | list[float]]:
    """Median plus min/max and every run, for the JSON report."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}
