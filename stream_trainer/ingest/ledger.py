"""The read side's one record per partition: its epoch, its reader, what was read and what was fed.

Words (``state/`` has the rest): the *read position* is the offset after the last message a
reader handed on; the *fed* offset is the last message the feeder passed to the fresh-row
buffer. Both live here and nowhere else; the trained and saved positions live in
``state/progress.py``.

An *epoch* is one unbroken chain of offsets of a partition. Only the source starts one: when it
starts a partition (epoch 0) and when it moves a partition's reader back
(``trainer.source.on_offset_reset`` after the topic was recreated, where old and new offsets
overlap); a reader restarted where reading stopped, or further on, continues its epoch. Every
message is recorded with the epoch of the read that produced it when it enters the inbox, so
the feeder knows each message's epoch exactly, and drops before the fresh rows:

* messages of an older epoch still in the inbox or the decode pipeline;
* duplicates: an offset at or below the last one fed (a re-read after a restart never trains a
  message twice in one epoch, and never starts an epoch either: only the source does).

Messages of a retired reader never get this far (``intake.py`` refuses them under its lock).

A reader that knows a record's CreateTime (the confluent-kafka reader) hands it on with the
message; it travels beside the offset in flight and ``created_ms`` answers it for the message
``fed`` last passed, so freshness can be measured from Kafka's timestamp (``feeder.py``).
Everything kept per partition is bounded by what is in flight between the reader and the feeder.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

# Far above what can be in flight (the inbox's queue and the decode pipeline hold a few groups):
# a bound for a feeder that keeps its own ledger (benchmarks), never reached by the trainer.
_IN_FLIGHT_MAX = 8192


@dataclass
class _Partition:
    epoch: int
    start: int  # the first offset of this epoch
    last_read: int  # the last offset a reader handed on in this epoch (start - 1 before the first)
    last_fed: int  # the last offset the feeder saw in this epoch (start - 1 before the first)
    # (offset, epoch, CreateTime ms or 0) of every message in the inbox or the decode pipeline, oldest first.
    in_flight: deque[tuple[int, int, int]] = field(default_factory=lambda: deque(maxlen=_IN_FLIGHT_MAX))
    fed_created_ms: int = 0  # the CreateTime of the message ``fed`` passed last (0 = unknown)


class PartitionLedger:
    """Thread-safe: readers record reads, the intake records hand-overs, the feeder records feeds."""

    def __init__(self, starts: Mapping[int, int] | None = None) -> None:
        self._lock = threading.Lock()
        self._parts: dict[int, _Partition] = {}
        for p, s in (starts or {}).items():
            self._parts[p] = _Partition(0, s, s - 1, s - 1)

    def reposition(self, partition: int, start: int) -> int:
        """``partition`` (new, or moved) continues at ``start``; return its epoch.

        A first start is epoch 0. A continuation at or after the read position keeps the epoch
        (after the position, retention deleted what lies between: the next message's ``prev``
        spans that gap, as it always did). A move back starts the next epoch: what the old one
        still has in flight is then dropped, and its offsets may reappear in the new one."""
        with self._lock:
            part = self._parts.get(partition)
            if part is None:
                self._parts[partition] = _Partition(0, start, start - 1, start - 1)
                return 0
            if start > part.last_read:
                part.last_read = start - 1
                return part.epoch
            part.epoch += 1
            part.start, part.last_read, part.last_fed = start, start - 1, start - 1
            return part.epoch

    def epoch(self, partition: int) -> int:
        with self._lock:
            part = self._parts.get(partition)
            return part.epoch if part is not None else 0

    def read(self, partition: int, epoch: int, offset: int) -> bool:
        """A reader of ``epoch`` read ``offset``: True if it is new (to be handed on), False for a
        message of an older epoch or a duplicate re-read."""
        with self._lock:
            part = self._parts.get(partition)
            if part is None or epoch != part.epoch or offset <= part.last_read:
                return False
            part.last_read = offset
            return True

    def read_position(self, partition: int) -> int:
        """The first offset no reader has handed on yet in the current epoch."""
        with self._lock:
            return self._parts[partition].last_read + 1

    def read_positions(self) -> dict[int, int]:
        with self._lock:
            return {p: part.last_read + 1 for p, part in self._parts.items()}

    def sent(self, partition: int, offsets: list[int], epoch: int, created_ms: list[int] | None = None) -> None:
        """These messages of ``partition`` entered the inbox, in this order (with their CreateTimes)."""
        with self._lock:
            part = self._parts.get(partition)
            if part is not None:
                part.in_flight.extend(zip(offsets, [epoch] * len(offsets), created_ms or [0] * len(offsets),
                                          strict=True))

    def in_flight(self, partition: int) -> int:
        with self._lock:
            part = self._parts.get(partition)
            return len(part.in_flight) if part is not None else 0

    def fed(self, partition: int, offset: int) -> tuple[int, int] | None:
        """The feeder sees ``offset`` (in pipeline order): its ``(epoch, prev)``, or None when it must
        be dropped (an older epoch, below the epoch's start, or a duplicate).

        ``prev`` is the previous message the feeder saw of this partition and epoch. Messages
        recorded as in flight before this one and never seen were dropped by the decoder."""
        with self._lock:
            part = self._parts.get(partition)
            if part is None:  # never started by a source (tests, benchmarks fill the inbox directly)
                part = self._parts[partition] = _Partition(0, offset, offset, offset - 1)
            epoch, created = part.epoch, 0
            flight = part.in_flight
            for i, (o, e, c) in enumerate(flight):
                if o == offset:
                    for _ in range(i + 1):
                        flight.popleft()
                    epoch, created = e, c
                    break
            if epoch != part.epoch or offset < part.start or offset <= part.last_fed:
                return None
            prev, part.last_fed, part.fed_created_ms = part.last_fed, offset, created
            return epoch, prev

    def created_ms(self, partition: int) -> int:
        """The CreateTime (Unix ms) of the message ``fed`` passed last for ``partition``; 0 = unknown."""
        with self._lock:
            part = self._parts.get(partition)
            return part.fed_created_ms if part is not None else 0

    def fed_positions(self) -> dict[int, int]:
        """Per partition, the offset after the last message the feeder saw (diagnostics, tests)."""
        with self._lock:
            return {p: part.last_fed + 1 for p, part in self._parts.items()}
