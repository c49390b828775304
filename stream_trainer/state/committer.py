"""Publishes progress to Kafka in the background: group offset commits and consumer lag.

Both talk to the broker, and a broker that is down makes them block for seconds; doing them on
their own thread keeps the training loop (and its reaction to SIGTERM) independent of that.
Only positions that a successful checkpoint holds are ever handed to ``commit``.

The thread outlives the loop's stop on purpose: the final checkpoint is committed after the loop
has stopped. So it has no stop event of its own to share; ``close`` ends it, bounded.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping

from stream_trainer import metrics
from stream_trainer.kafka import Cluster
from stream_trainer.threads import Threads

log = logging.getLogger(__name__)


class Committer:
    def __init__(self, cluster: Cluster, topic: str, positions: Callable[[], Mapping[int, int]],
                 lag_every_s: float = 5.0) -> None:
        self.cluster = cluster
        self.topic = topic
        self._positions = positions  # live positions, for lag
        self._lag_every_s = lag_every_s
        self._lock = threading.Lock()
        self._to_commit: dict[int, int] | None = None
        self.committed: dict[int, int] = {}
        self.lag: dict[int, int] = {}
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, threads: Threads) -> Committer:
        """Run the keepalive / commit / lag thread under ``threads``: if it dies, the trainer stops."""
        self._thread = threads.start("committer", self._run)
        return self

    def commit(self, offsets: Mapping[int, int]) -> None:
        """Queue ``offsets`` (already checkpointed) for committing; the newest request wins."""
        with self._lock:
            self._to_commit = dict(offsets)
        self._wake.set()

    def close(self, timeout_s: float = 5.0) -> None:
        """End the background thread, waiting at most ``timeout_s`` for a round in flight."""
        self._closed.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Commit what is queued now (shutdown); True on success. Bounded: during an outage a
        commit would block for the client's whole timeout, and a stop must not take that long
        (the checkpoint already holds the positions; the next run commits them). The helper
        thread is short-lived and its result is the return value, so it needs no supervisor."""
        done: list[bool] = []
        worker = threading.Thread(target=lambda: done.append(self._commit_pending()), name="final-commit",
                                  daemon=True)
        worker.start()
        worker.join(timeout_s)
        return bool(done and done[0])

    def _commit_pending(self) -> bool:
        with self._lock:
            offsets, self._to_commit = self._to_commit, None
        if not offsets:
            return True
        try:
            self.cluster.commit(self.topic, offsets)
        except Exception as exc:  # noqa: BLE001 - keep it for the next round
            metrics.COMMIT_FAILURES.inc()
            log.warning("committing offsets %s failed (%s); will retry", offsets, exc)
            with self._lock:
                self._to_commit = self._to_commit or offsets
            return False
        self.committed = offsets
        return True

    def _update_lag(self) -> None:
        positions = self._positions()
        try:
            marks = self.cluster.watermarks(self.topic, positions, timeout_s=2.0)
        except Exception as exc:  # noqa: BLE001 - lag is best effort; an outage shows as stale lag
            log.debug("watermarks unavailable: %s", exc)
            return
        for p, wm in marks.items():
            lag = max(0, wm.high - max(positions[p], wm.low))
            self.lag[p] = lag
            metrics.CONSUMER_LAG.labels(self.topic, str(p)).set(lag)

    def _run(self) -> None:
        while not self._closed.is_set():
            self.cluster.keepalive()
            self._commit_pending()
            self._update_lag()
            self._wake.wait(self._lag_every_s)
            self._wake.clear()
