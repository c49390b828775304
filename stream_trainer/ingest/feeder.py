"""The thread that moves decoded rows from the tf.data pipeline into the fresh-row buffer.

Why a thread: the pipeline blocks inside TensorFlow until messages arrive, and a Python signal
handler cannot run while the main thread sits in that ``next()``. The loop instead works on the
fresh-row buffer with timeouts, so SIGTERM is noticed within a fraction of a second even on an idle
topic; the feeder is a daemon thread and never holds up exit.

Rows leave the pipeline in arrival order, so the feeder links each row to the previous row of its
partition (``prev``): a gap between ``prev`` and ``offset`` is exactly the messages the pipeline
dropped as malformed, which the loop dead-letters before its position moves past them.

Offsets of a partition never go backwards, except when its reader was moved back by
``trainer.source.on_offset_reset`` (the topic was recreated). The feeder then starts a new
*epoch* of that partition: rows carry their epoch, and whatever the old epoch still has in flight
(rows, dead-letter holes) is ignored by the position bookkeeping instead of being mistaken for
offsets of the new topic.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import tensorflow as tf

from stream_trainer.ingest.fresh import FreshRows, Rows

log = logging.getLogger(__name__)


class Feeder:
    """Iterates ``decoded`` (batches of decoded rows) in a daemon thread into ``fresh``."""

    def __init__(self, decoded: tf.data.Dataset, fresh: FreshRows, starts: Mapping[int, int],
                 stop: threading.Event, on_new_epoch: Callable[[int, int, int], None] | None = None) -> None:
        self._decoded = decoded
        self.fresh = fresh
        self._stop = stop
        self._lock = threading.Lock()
        self._last = {p: s - 1 for p, s in starts.items()}
        self._epoch = dict.fromkeys(starts, 0)
        self._on_new_epoch = on_new_epoch
        self.exhausted = threading.Event()  # a bounded read ended (benchmarks, tests)
        self.failure: BaseException | None = None  # the pipeline itself broke: the loop must stop
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)
        self._iterator: Iterator[dict[str, tf.Tensor]] = iter(decoded)

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def restart_partition(self, partition: int, start: int) -> None:
        """A partition now continues at ``start`` (new partition, or a position reset by policy)."""
        with self._lock:
            self._last[partition] = start - 1

    def _run(self) -> None:
        try:
            for group in self._iterator:
                rows = self._rows(group)
                # A group whose every message was malformed has no rows (pipeline.decoded_groups).
                if len(rows) and not self.fresh.put(rows, self._stop):
                    return
            self.exhausted.set()
        except Exception as exc:
            log.exception("the decode pipeline failed")
            self.failure = exc

    def _rows(self, group: dict[str, tf.Tensor]) -> Rows:
        partition = group["partition"].numpy()
        offset = group["offset"].numpy()
        prev = np.empty_like(offset)
        epoch = np.empty(offset.shape, np.int32)
        with self._lock:
            for i, (p, o) in enumerate(zip(partition.tolist(), offset.tolist(), strict=True)):
                last = self._last.get(p, o - 1)
                if o <= last:  # moved back by on_offset_reset: a new chain
                    self._epoch[p] = self._epoch.get(p, 0) + 1
                    log.warning("partition %d went back from offset %d to %d (on_offset_reset); epoch %d", p, last, o,
                                self._epoch[p])
                    if self._on_new_epoch is not None:
                        self._on_new_epoch(p, o, self._epoch[p])
                    last = o - 1
                prev[i] = last
                epoch[i] = self._epoch.get(p, 0)
                self._last[p] = o
        n = offset.shape[0]
        return Rows(image=group["image"].numpy(), mask=group["mask"].numpy(), partition=partition, offset=offset,
                    prev=prev, produce_ts_ms=group["produce_ts_ms"].numpy(), nbytes=group["nbytes"].numpy(),
                    arrived=np.full(n, time.monotonic()), epoch=epoch)
