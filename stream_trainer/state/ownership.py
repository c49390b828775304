"""One owner per checkpoint directory and per consumer group.

Two trainers writing one checkpoint directory, or committing for one consumer group, would each
overwrite the other's positions. Rolling updates start the new copy while the old one still runs,
so the trainer claims both before it restores anything, with what the OS and Kafka already
provide, no lease of our own:

* **the directory**: an exclusive ``flock`` on ``<checkpoint.dir>/.owner``. The kernel releases
  it when the owner exits, however it exits (a SIGKILLed owner blocks nobody).
* **the group**: the trainer is a member of its consumer group (subscribed to the training
  topic, every partition paused: it never fetches through the group). A newcomer whose first
  assignment is not the whole topic shares the group with someone: it leaves and waits. A
  hard-killed owner leaves the group after its session timeout.

``trainer.checkpoint.when_owned``: ``wait`` (default: take over once the owner is gone, the
rolling-update behaviour) or ``fail`` (exit 2 with a message naming the owner).
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import IO

from stream_trainer.errors import ConfigError, OwnershipError
from stream_trainer.kafka import Cluster
from stream_trainer.state import writable

log = logging.getLogger(__name__)
_LOG_EVERY_S = 30.0


class DirectoryLock:
    """An exclusive lock on a checkpoint directory, held for the life of the process."""

    def __init__(self, directory: str | Path, key: str = "trainer.checkpoint.dir") -> None:
        self.path = Path(directory) / ".owner"
        self.key = key  # the setting that names the directory, for errors
        self._file: IO[str] | None = None

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; a directory that cannot be used is a ``ConfigError``."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(self.path, "a+")  # noqa: SIM115 - held open while the lock is held
        except OSError as exc:
            problem = writable.directory_problem(self.path.parent) or f"{self.path}: {exc.strerror}"
            msg = f"config key '{self.key}': {problem}"
            raise ConfigError(msg) from exc
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        handle.flush()
        self._file = handle
        return True

    def owner(self) -> str:
        try:
            return self.path.read_text().strip() or "unknown"
        except OSError:
            return "unknown"

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing releases the flock
            self._file = None


def claim(lock: DirectoryLock, cluster: Cluster, topic: str, when_owned: str, stop: threading.Event) -> bool:
    """Hold the checkpoint directory and the consumer group; False if ``stop`` came first."""
    waited_since = time.monotonic()
    logged = 0.0
    while not stop.is_set():
        if lock.try_acquire():
            break
        owner = f"checkpoint directory {lock.path.parent} is in use by another trainer ({lock.owner()})"
        logged = _wait_or_fail(owner, when_owned, waited_since, logged)
        stop.wait(1.0)
    else:
        return False
    while not stop.is_set():
        others = cluster.join_group(topic)
        if not others:
            return True
        cluster.leave_group()
        who = f"consumer group '{cluster.group_id}' has other members ({others})"
        logged = _wait_or_fail(who, when_owned, waited_since, logged)
        stop.wait(2.0)
    lock.release()
    return False


def _wait_or_fail(what: str, when_owned: str, since: float, logged: float) -> float:
    if when_owned == "fail":
        msg = f"{what}; stop it first, or set trainer.checkpoint.when_owned: wait to take over when it is gone"
        raise OwnershipError(msg)
    now = time.monotonic()
    if now - logged >= _LOG_EVERY_S:
        log.warning("%s; waiting for it to go (%.0f s so far)", what, now - since)
        return now
    return logged
