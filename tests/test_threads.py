"""The supervisor every long-lived thread runs under (stream_trainer/threads.py)."""

from __future__ import annotations

import threading

from stream_trainer.errors import ConfigError, ThreadDiedError
from stream_trainer.threads import Threads


def _join_test_threads() -> None:
    for t in list(threading.enumerate()):
        if t.name.startswith("test-"):
            t.join(5.0)


def test_an_unexpected_exception_in_a_thread_becomes_a_failure_naming_it() -> None:
    threads = Threads()

    def boom() -> None:
        raise KeyError("partition 7")

    threads.start("test-committer", boom)
    _join_test_threads()
    failure = threads.failure()
    assert isinstance(failure, ThreadDiedError)
    assert str(failure) == "the test-committer thread died: KeyError: 'partition 7'"
    assert "\n" not in str(failure)


def test_a_project_error_is_kept_as_it_is_and_the_first_death_wins() -> None:
    threads = Threads()
    first = ConfigError("config key 'x': bad")
    threads.start("test-first", lambda: (_ for _ in ()).throw(first))
    _join_test_threads()
    threads.start("test-second", lambda: 1 / 0)
    _join_test_threads()
    assert threads.failure() is first


def test_a_thread_that_returns_is_no_failure_and_is_forgotten() -> None:
    threads = Threads()
    release = threading.Event()
    threads.start("test-waiting", release.wait)
    for i in range(50):
        threads.start(f"test-done-{i}", lambda: None)
    release.set()
    _join_test_threads()
    threads.start("test-last", lambda: None)
    _join_test_threads()
    assert threads.failure() is None
    assert len(threads._threads) <= 2  # finished threads are dropped, not kept for the life of the daemon
