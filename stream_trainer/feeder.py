"""The thread that moves decoded rows from the tf.data pipeline into the fresh-row buffer.

Why a thread: the pipeline blocks inside TensorFlow until messages arrive, and a Python signal
handler cannot run while the main thread sits in that ``next()``. The loop instead works on the
fresh-row buffer with timeouts, so SIGTERM is noticed within a fraction of a second even on an idle
topic; the feeder is a daemon thread and never holds up exit.

Rows leave the pipeline in arrival order, so the feeder links each row to the previous row of its
partition (``prev``): a gap between ``prev`` and ``offset`` is exactly the messages the pipeline
dropped as malformed, which the loop dead-letters before its position moves past them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping

import numpy as np
import tensorflow as tf

from stream_trainer.fresh import FreshRows, Rows

log = logging.getLogger(__name__)


class Feeder:
    """Iterates ``decoded`` (batches of decoded rows) in a daemon thread into ``fresh``."""

    def __init__(self, decoded: tf.data.Dataset, fresh: FreshRows, starts: Mapping[int, int],
                 stop: threading.Event) -> None:
        self._decoded = decoded
        self.fresh = fresh
        self._stop = stop
        self._lock = threading.Lock()
        self._last = {p: s - 1 for p, s in starts.items()}
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
                if not self.fresh.put(self._rows(group), self._stop):
                    return
            self.exhausted.set()
        except Exception as exc:  # noqa: BLE001 - a broken pipeline must stop the loop, not starve it
            log.exception("the decode pipeline failed")
            self.failure = exc

    def _rows(self, group: dict[str, tf.Tensor]) -> Rows:
        partition = group["partition"].numpy()
        offset = group["offset"].numpy()
        prev = np.empty_like(offset)
        with self._lock:
            for i, (p, o) in enumerate(zip(partition.tolist(), offset.tolist(), strict=True)):
                prev[i] = self._last.get(p, o - 1)
                self._last[p] = o
        n = offset.shape[0]
        return Rows(image=group["image"].numpy(), mask=group["mask"].numpy(), partition=partition, offset=offset,
                    prev=prev, produce_ts_ms=group["produce_ts_ms"].numpy(), nbytes=group["nbytes"].numpy(),
                    arrived=np.full(n, time.monotonic()))
