"""A thread that pulls batches from the tf.data iterator into a small queue.

Why a thread: with ``eof=False`` tfio's Kafka reader blocks inside C++ until a message
arrives, and a Python signal handler cannot run while the main thread sits in that ``next()``.
The loop instead reads this queue with a timeout, so SIGTERM is noticed within a fraction of
a second even on an idle topic; the feeder is a daemon thread and never holds up exit.

When the source itself fails (tfio 0.37.1 ends its iterator on a fatal librdkafka error or a
consume error other than a transport failure; "all brokers down" alone it rides out, reconnecting
by itself), the feeder rebuilds the dataset from the positions the loop has trained up to and
carries on: an outage shows up as input wait, not as a dead process (docs/reliability.md).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

import tensorflow as tf
from prometheus_client import Counter

log = logging.getLogger(__name__)

SOURCE_RESTARTS = Counter(
    "stream_trainer_source_restarts_total", "Times the Kafka input pipeline was rebuilt after a source error.")

Batch = dict[str, Any]

# Every iterator a feeder ever made stays referenced for the life of the process. tfio's reader
# ignores cancellation while it waits for a message, so destroying an iterator whose reader is
# blocked waits forever, holding the GIL: the whole process would freeze (seen when a stopped
# trainer's Feeder was garbage-collected). The CLI leaves with os._exit, so none is ever freed.
_ITERATORS: list[object] = []


class Feeder:
    """Iterates ``make_dataset()`` in a daemon thread; ``get`` hands batches to the loop."""

    def __init__(self, make_dataset: Callable[[], tf.data.Dataset], stop: threading.Event,
                 depth: int = 2, restart_backoff_s: float = 2.0) -> None:
        self._make = make_dataset
        self._stop = stop
        self._queue: queue.Queue[Batch] = queue.Queue(maxsize=depth)
        self._backoff = restart_backoff_s
        self.exhausted = threading.Event()  # a bounded dataset ran out (tests, benchmarks)
        self.restarts = 0
        self.failure: BaseException | None = None  # set when the pipeline cannot be built at all
        self._thread = threading.Thread(target=self._run, name="feeder", daemon=True)

    def start(self) -> Feeder:
        self._thread.start()
        return self

    def get(self, timeout_s: float) -> Batch | None:
        """The next batch, or None if none came within ``timeout_s``."""
        try:
            return self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def _put(self, batch: Batch) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(batch, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            self._feed()
        except Exception as exc:  # noqa: BLE001 - a bug building the pipeline: the loop must stop, not starve
            log.exception("the input pipeline cannot run")
            self.failure = exc

    def _feed(self) -> None:
        while not self._stop.is_set():
            iterator = iter(self._make())
            _ITERATORS.append(iterator)
            try:
                for batch in iterator:
                    if not self._put(batch):
                        return
                self.exhausted.set()
                return
            except tf.errors.OutOfRangeError:
                self.exhausted.set()
                return
            except tf.errors.OpError as exc:
                self.restarts += 1
                SOURCE_RESTARTS.inc()
                log.error("input pipeline failed (%s); rebuilding it from the trained positions in %.0f s",
                          str(exc.message).splitlines()[0], self._backoff)
                self._stop.wait(self._backoff)
