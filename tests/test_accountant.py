"""The accountant against a real broker: trained rows move positions; a message the decoder reports
as dropped is dead-lettered and its position moves without waiting for a later message, even
when the report comes from another thread and the message is the last of its partition."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from producer.sources.synthetic import make_record
from stream_trainer import wire
from stream_trainer.ingest.fresh import Rows
from stream_trainer.kafka import Cluster
from stream_trainer.learn.batcher import Batch
from stream_trainer.loop.accountant import Accountant
from stream_trainer.quality.deadletter import DeadLetterWorker
from stream_trainer.state.progress import OffsetTracker
from stream_trainer.threads import Threads

SIZE = 8


def _batch(offsets: list[int], prevs: list[int]) -> Batch:
    n = len(offsets)
    rows = Rows(image=np.zeros((n, SIZE, SIZE, 3), np.uint8), mask=np.zeros((n, SIZE, SIZE, 1), np.uint8),
                partition=np.zeros(n, np.int32), offset=np.array(offsets, np.int64), prev=np.array(prevs, np.int64),
                produce_ts_ms=np.zeros(n, np.int64), nbytes=np.ones(n, np.int32), arrived=np.zeros(n),
                epoch=np.zeros(n, np.int32))
    return Batch(rows.image, rows.mask, np.ones(n, np.float32), np.ones(n, bool), rows)


def _dead_lettered(cluster: Cluster, topic: str) -> list[dict[str, bytes]]:
    return [dict(m.headers() or []) for m in cluster.read_range(topic, 0, 0, cluster.watermarks(topic, [0])[0].high)]


def test_a_dropped_last_message_is_dead_lettered_and_its_position_moves_without_a_later_message(
        cluster: Cluster, new_topic: Callable[..., str], tmp_path: Path) -> None:
    train, dlq = new_topic(1, "acct"), new_topic(1, "acct-dlq")
    good = wire.encode(make_record(0, min_size=40, max_size=40), 0)
    for value in (good, good, b"\xff not a tf.train.Example"):  # the malformed one is the partition's last
        cluster.producer.produce(train, value=value, partition=0)
    assert cluster.producer.flush(10) == 0
    stop = threading.Event()
    dead = DeadLetterWorker(cluster, dlq, stop, Threads()).start()
    tracker = OffsetTracker({0: 0})
    accountant = Accountant(train, tracker, dead, None, str(tmp_path / "log" / "trained.log"))
    try:
        assert accountant.trained(_batch([0, 1], [-1, 0]), step=1) == (2, 0)
        assert tracker.positions() == {0: 2}
        reporter = threading.Thread(target=accountant.dropped, args=(0, 1, 2, 0))  # the feeder's thread
        reporter.start()
        reporter.join(5)
        deadline = time.monotonic() + 30
        while tracker.positions() != {0: 3} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tracker.positions() == {0: 3}, "the position stayed on the dropped message"
        headers = _dead_lettered(cluster, dlq)
        assert [(h["dlq.offset"], h["dlq.reason"]) for h in headers] == [(b"2", b"parse")], headers
    finally:
        stop.set()
        dead.join(5)
        accountant.close()
    assert (tmp_path / "log" / "trained.log").read_text() == "0 0 1\n0 1 1\n"


def test_a_gap_before_a_trained_row_is_dead_lettered_before_the_row_moves_the_position(
        cluster: Cluster, new_topic: Callable[..., str]) -> None:
    train, dlq = new_topic(1, "acct"), new_topic(1, "acct-dlq")
    good = wire.encode(make_record(0, min_size=40, max_size=40), 0)
    for value in (good, b"", good):
        cluster.producer.produce(train, value=value, partition=0)
    assert cluster.producer.flush(10) == 0
    stop = threading.Event()
    dead = DeadLetterWorker(cluster, dlq, stop, Threads())  # not started yet: the hole waits
    tracker = OffsetTracker({0: 0})
    accountant = Accountant(train, tracker, dead, None)
    accountant.trained(_batch([0, 2], [-1, 0]), step=1)  # offset 1 never became a row
    assert tracker.positions() == {0: 1}, "the position moved past a message nobody dead-lettered"
    dead.start()
    try:
        deadline = time.monotonic() + 30
        while tracker.positions() != {0: 3} and time.monotonic() < deadline:
            time.sleep(0.05)
        assert tracker.positions() == {0: 3}
        assert [h["dlq.offset"] for h in _dead_lettered(cluster, dlq)] == [b"1"]
    finally:
        stop.set()
        dead.join(5)
