"""Every long-lived thread of the daemon, supervised: the first one to die stops the trainer.

A daemon that keeps running after one of its background threads died has silently stopped part
of its job: a dead committer freezes the group's offsets, a dead dead-letter worker freezes every
position behind a malformed message, a dead partition watcher never sees new partitions. So no
component starts a bare ``threading.Thread``; each asks ``Threads.start``. An exception that
escapes a thread is recorded as the trainer's failure (one line naming the thread and the
error), and the loop, which asks ``failure()`` every round, stops the way it stops for a source
failure: final checkpoint (positions only ever cover trained or dead-lettered messages, so it
is always safe), then exit non-zero with that line.

Threads are daemon threads: a thread blocked in C++ (tensorflow-io's reader ignores
cancellation) must never hold up the process's exit.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from stream_trainer.errors import StreamTrainerError, ThreadDiedError

log = logging.getLogger(__name__)


class Threads:
    """Starts the daemon's threads and remembers the first that died; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failure: StreamTrainerError | None = None
        self._threads: list[threading.Thread] = []

    def start(self, name: str, target: Callable[[], object]) -> threading.Thread:
        """Run ``target`` in a daemon thread called ``name``; its exception becomes ``failure()``.

        A ``StreamTrainerError`` is kept as it is (it already says what to do); anything else is
        wrapped in a ``ThreadDiedError`` that names the thread. Returning normally is not a failure.
        """

        def supervised() -> None:
            try:
                target()
            except StreamTrainerError as exc:
                self._died(name, exc)
            except BaseException as exc:  # noqa: BLE001 - every way a thread can end is reported
                msg = f"the {name} thread died: {type(exc).__name__}: {exc}"
                log.debug("%s", msg, exc_info=True)  # the traceback, for whoever turns debug on
                self._died(name, ThreadDiedError(msg))

        thread = threading.Thread(target=supervised, name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]  # finished ones: never a growing list
            self._threads.append(thread)
        thread.start()
        return thread

    def _died(self, name: str, exc: StreamTrainerError) -> None:
        with self._lock:
            first = self._failure is None
            if first:
                self._failure = exc
        if first:
            log.error("%s", exc)
        else:
            log.error("the %s thread also ended: %s", name, exc)

    def failure(self) -> StreamTrainerError | None:
        """The first thread's death, or None while every thread does its work."""
        with self._lock:
            return self._failure

    def alive(self) -> list[str]:
        """Names of the threads still running (diagnostics, the soak's thread count)."""
        with self._lock:
            return [t.name for t in self._threads if t.is_alive()]
