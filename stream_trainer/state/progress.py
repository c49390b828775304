"""Which offsets the model has absorbed: the per-partition "next offset to train".

Batches arrive out of offset order (shuffle window, several partitions), so a partition's
position only advances over an unbroken chain of handled messages. Each element names the
previous surviving message of its partition (``prev``, from the pipeline), so the chain is
``last -> offset`` links; holes between ``prev`` and ``offset`` are malformed messages, which
count as handled once dead-lettered. Kafka offsets need not be contiguous (transaction
markers, compaction), which is why links come from the data rather than from ``offset + 1``.

The saved position is the first offset not yet reflected in the weights: after a hard kill
nothing is skipped, and duplicates are bounded by what was read past that point.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping


class OffsetTracker:
    """Thread-safe: the loop marks trained messages, the dead-letter worker marks holes."""

    def __init__(self, starts: Mapping[int, int]) -> None:
        self._lock = threading.Lock()
        self._last = {p: s - 1 for p, s in starts.items()}
        self._links: dict[int, dict[int, int]] = {p: {} for p in starts}
        self._epoch = dict.fromkeys(starts, 0)

    def handled(self, partition: int, prev: int, offset: int, epoch: int = 0) -> None:
        """Everything in (prev, offset] of ``partition`` is done: trained or dead-lettered.

        Links of an older ``epoch`` (before the partition was moved back) are ignored."""
        with self._lock:
            if epoch != self._epoch.get(partition, 0):
                return
            last = self._last[partition]
            if offset <= last:
                return  # a duplicate re-read after a source restart
            links = self._links[partition]
            links[prev] = max(offset, links.get(prev, offset))
            while last in links:
                last = links.pop(last)
            self._last[partition] = last
            # Links that start below the chain's end can never be reached again: drop them.
            if links and min(links) < last:
                for stale in [k for k in links if k < last]:
                    del links[stale]

    def reset(self, partition: int, start: int, epoch: int = 0) -> None:
        """``partition`` continues at ``start`` in ``epoch``: a partition added to the topic, or a
        position moved back by ``trainer.source.on_offset_reset`` after the topic was recreated."""
        with self._lock:
            self._last[partition] = start - 1
            self._links[partition] = {}
            self._epoch[partition] = epoch

    def is_current(self, partition: int, epoch: int) -> bool:
        with self._lock:
            return epoch == self._epoch.get(partition, 0)

    def positions(self) -> dict[int, int]:
        """Per partition, the first offset whose message is not yet handled."""
        with self._lock:
            return {p: last + 1 for p, last in self._last.items()}

    def pending(self) -> int:
        """Handled messages waiting behind a hole (diagnostics; should stay small)."""
        with self._lock:
            return sum(len(v) for v in self._links.values())
