"""The input path without Kafka: inbox -> decode groups -> feeder -> fresh rows -> batches.

Real encoded pets (JPEG + PNG trimaps) and real malformed messages, put into the inbox the way
the Kafka readers put them; graph-mode shape bugs show here, not only eagerly.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from producer.sources.synthetic import make_record
from stream_trainer import config, wire
from stream_trainer.errors import one_line
from stream_trainer.ingest import pipeline
from stream_trainer.ingest.feeder import Feeder
from stream_trainer.ingest.fresh import FreshRows, Rows
from stream_trainer.ingest.inbox import Inbox
from stream_trainer.ingest.intake import Intake
from stream_trainer.ingest.ledger import PartitionLedger
from stream_trainer.learn.batcher import Batcher
from stream_trainer.learn.replay import ReplayStore
from stream_trainer.learn.step import flip_rows
from stream_trainer.threads import Threads
from tests.test_trainer import poison_messages

SIZE = 32


def _value(index: int) -> bytes:
    return wire.encode(make_record(index, seed=3, min_size=60, max_size=80), 1234)


def _put(inbox: Inbox, partition: int, offset: int, value: bytes) -> None:
    inbox.put(tf.constant(value), tf.constant(partition, tf.int32), tf.constant(offset, tf.int64))


def _feed(values: dict[tuple[int, int], bytes], starts: dict[int, int]) -> tuple[FreshRows, Feeder]:
    inbox = Inbox(64)
    for (p, o), v in values.items():
        _put(inbox, p, o, v)
    inbox.put_end()
    fresh = FreshRows(capacity=64)
    feeder = Feeder(pipeline.decoded_groups(inbox, SIZE, group=8), fresh, starts, threading.Event()).start()
    assert feeder.exhausted.wait(60), feeder.failure
    return fresh, feeder


def test_malformed_messages_are_dropped_and_the_survivors_link_over_the_gap() -> None:
    bad = list(poison_messages().values())
    values = {(0, 100): _value(0), (0, 101): bad[0], (0, 102): bad[3], (0, 103): _value(1), (0, 104): b"",
              (0, 105): _value(2), (1, 7): _value(3), (1, 8): _value(4)}
    fresh, _ = _feed(values, {0: 100, 1: 7})
    rows = fresh.take(64)
    assert rows is not None
    got = list(zip(rows.partition.tolist(), rows.prev.tolist(), rows.offset.tolist(), strict=True))
    # Arrival order within each partition; a gap between prev and offset is exactly the dropped ones.
    assert got == [(0, 99, 100), (0, 100, 103), (0, 103, 105), (1, 6, 7), (1, 7, 8)]
    assert rows.image.shape == (5, SIZE, SIZE, 3) and rows.image.dtype == np.uint8
    assert set(np.unique(rows.mask)) <= {0, 1, 2}
    assert (rows.produce_ts_ms == 1234).all()


def test_a_group_is_what_has_arrived_so_nothing_waits_for_later_traffic() -> None:
    inbox = Inbox(64)
    fresh = FreshRows(capacity=64)
    Feeder(pipeline.decoded_groups(inbox, SIZE, group=8), fresh, {0: 0}, threading.Event()).start()
    _put(inbox, 0, 0, _value(0))
    # One lone message on an otherwise idle partition comes through on its own.
    assert fresh.wait(1, time.monotonic() + 30) == 1
    for o in range(1, 4):
        _put(inbox, 0, o, _value(o))
    assert fresh.wait(4, time.monotonic() + 30) == 4
    rows = fresh.take(10)
    assert rows is not None and rows.offset.tolist() == [0, 1, 2, 3]


def test_decode_parallelism_does_not_depend_on_partitions_and_keeps_order_per_partition() -> None:
    values = {(0, o): _value(o) for o in range(40)}
    fresh, _ = _feed(values, {0: 0})
    rows = fresh.take(64)
    assert rows is not None and rows.offset.tolist() == list(range(40))


def _most_decodes_at_once(group: int, threads: int) -> int:
    """Decode 16 messages of one partition with a decode_message that records how many of its
    calls overlap; check the rows come out in order and return the most calls at once."""
    lock, active, most = threading.Lock(), [0], [0]

    def enter_and_leave(offset: tf.Tensor) -> tf.Tensor:
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        time.sleep(0.05)  # outside the GIL: an overlapping call can enter meanwhile
        with lock:
            active[0] -= 1
        return offset

    def recording_decode(value: tf.Tensor, partition: tf.Tensor, offset: tf.Tensor, size: int,
                         max_pixels: int) -> dict[str, tf.Tensor]:
        row = pipeline.decode_message(value, partition, offset, size, max_pixels)
        seen = tf.py_function(enter_and_leave, [offset], tf.int64)
        with tf.control_dependencies([seen]):
            row["offset"] = tf.identity(row["offset"])
        return row

    inbox = Inbox(64)
    for o in range(16):
        _put(inbox, 0, o, _value(o))
    inbox.put_end()
    fresh = FreshRows(capacity=64)
    groups = pipeline.decoded_groups(inbox, SIZE, group=group, threads=threads, decode=recording_decode)
    feeder = Feeder(groups, fresh, {0: 0}, threading.Event()).start()
    assert feeder.exhausted.wait(60), feeder.failure
    rows = fresh.take(64)
    assert rows is not None and rows.offset.tolist() == list(range(16))  # still in order
    return most[0]


def test_one_partition_is_decoded_by_several_calls_at_once() -> None:
    """Parallelism comes from the group, not from the partition count: the decode of one
    partition's messages runs concurrently."""
    most = _most_decodes_at_once(group=16, threads=4)
    assert most >= 2, f"at most {most} decode call(s) at a time on one partition"


def test_the_next_group_decodes_while_the_last_images_of_a_group_finish() -> None:
    """No core idles between groups: with one decode call at a time per group, two groups of a
    partition still decode at once, and their rows come out in order."""
    most = _most_decodes_at_once(group=4, threads=1)
    assert most >= 2, f"{most} decode call(s) at a time with one per group"


def _rows(n: int, start: int = 0, arrived: float | None = None) -> Rows:
    return Rows(image=np.full((n, SIZE, SIZE, 3), 7, np.uint8), mask=np.ones((n, SIZE, SIZE, 1), np.uint8),
                partition=np.zeros(n, np.int32), offset=np.arange(start, start + n, dtype=np.int64),
                prev=np.arange(start - 1, start + n - 1, dtype=np.int64), produce_ts_ms=np.zeros(n, np.int64),
                nbytes=np.full(n, 100, np.int32), arrived=np.full(n, time.monotonic() if arrived is None else arrived),
                epoch=np.zeros(n, np.int32))


def _batcher(fresh: FreshRows, replay: ReplayStore | None = None, wait_ms: int = 200, fraction: float = 0.25,
             batch: int = 8) -> Batcher:
    p = config.PipelineConfig(image_size=SIZE, batch_size=batch, max_batch_wait_ms=wait_ms)
    return Batcher(fresh, replay, p, config.ReplayConfig(fraction=fraction), SIZE)


def test_a_partial_batch_goes_once_its_oldest_row_waited_max_batch_wait() -> None:
    fresh = FreshRows(64)
    fresh.put(_rows(3), threading.Event())
    t0 = time.monotonic()
    batch = _batcher(fresh, wait_ms=300).next(wait_s=1.0)
    waited = time.monotonic() - t0
    assert batch is not None and batch.n_fresh == 3 and batch.weight.tolist() == [1.0] * 3
    assert 0.25 <= waited < 1.0


def test_without_fresh_rows_there_is_no_batch() -> None:
    assert _batcher(FreshRows(8)).next(wait_s=0.05) is None


def test_replay_fills_the_batch_and_keeps_its_share_when_fresh_rows_could_fill_it() -> None:
    replay = ReplayStore(capacity_bytes=100 * SIZE * SIZE * 4, image_size=SIZE, seed=1)
    replay.add(np.zeros((20, SIZE, SIZE, 3), np.uint8), np.zeros((20, SIZE, SIZE, 1), np.uint8),
               np.zeros(20, np.int32), np.arange(20, dtype=np.int64))
    fresh = FreshRows(64)
    batcher = _batcher(fresh, replay, fraction=0.25, batch=8)
    fresh.put(_rows(2), threading.Event())
    slow = batcher.next(wait_s=1.0)  # a slow stream: replay fills the rest
    assert slow is not None and (slow.n_fresh, len(slow.weight)) == (2, 8)
    assert slow.fresh.tolist() == [True] * 2 + [False] * 6
    fresh.put(_rows(30, start=2), threading.Event())
    fast = batcher.next(wait_s=1.0)  # a fast stream: fresh rows stop at the reserve
    assert fast is not None and (fast.n_fresh, len(fast.weight)) == (6, 8)
    assert fast.rows is not None and fast.rows.offset.tolist() == list(range(2, 8))  # oldest first


def test_a_placeholder_batch_has_zero_weight() -> None:
    batch = _batcher(FreshRows(8)).placeholder()
    assert batch.n_rows == 0 and batch.weight.sum() == 0 and batch.image.shape[1:] == (SIZE, SIZE, 3)


def test_a_shuffled_batch_takes_overdue_rows_first() -> None:
    fresh = FreshRows(64)
    fresh.put(_rows(4, start=0, arrived=time.monotonic() - 10), threading.Event())
    fresh.put(_rows(20, start=4), threading.Event())
    rows = fresh.take(6, np.random.default_rng(0), window=24, overdue_s=1.0)
    assert rows is not None and set(range(4)) <= set(rows.offset.tolist())


@pytest.mark.parametrize("graph", [False, True])
def test_flip_moves_image_and_mask_together(graph: bool) -> None:
    x = np.zeros((4, 8, 8, 3), np.float32)
    x[:, :, :4] = 1.0  # left half bright
    y = np.zeros((4, 8, 8, 1), np.int32)
    y[:, :, :4] = 2  # left half border class
    coins = tf.constant([True, False, True, False])
    fn = tf.function(flip_rows) if graph else flip_rows
    fx, fy = fn(tf.constant(x), tf.constant(y), coins)
    bright = fx.numpy()[..., 0] == 1.0
    assert np.array_equal(bright, fy.numpy()[..., 0] == 2)
    assert bright[0, 0, -1] and not bright[1, 0, -1]  # row 0 flipped, row 1 not


# -- the read side's ledger, the intake and the feeder's dropped-message reports -------------------
def test_dropped_messages_are_reported_at_once_with_the_previous_seen_offset() -> None:
    """A group that names every message it saw reports each one the decoder dropped, the last
    message of a partition included, without waiting for a later message."""
    bad = list(poison_messages().values())
    inbox = Inbox(64)
    entered = [(0, 100, _value(0)), (0, 101, bad[0]), (0, 102, _value(1)), (1, 7, bad[3])]
    for p, o, v in entered:
        _put(inbox, p, o, v)
    inbox.put_end()
    decoded = list(pipeline.decoded_groups(inbox, SIZE, group=8))
    assert len(decoded) == 1 and decoded[0]["offset"].numpy().tolist() == [100, 102]  # real decoding dropped two
    group = dict(decoded[0], seen_partition=tf.constant([p for p, _, _ in entered], tf.int32),
                 seen_offset=tf.constant([o for _, o, _ in entered], tf.int64))
    dropped: list[tuple[int, int, int, int]] = []
    fresh = FreshRows(capacity=64)
    feeder = Feeder(tf.data.Dataset.from_tensors(group), fresh, {0: 100, 1: 7}, threading.Event(),
                    on_dropped=lambda *hole: dropped.append(hole)).start()
    assert feeder.exhausted.wait(60), feeder.failure
    assert dropped == [(0, 100, 101, 0), (1, 6, 7, 0)]  # (partition, prev, offset, epoch)
    rows = fresh.take(64)
    assert rows is not None
    assert list(zip(rows.partition.tolist(), rows.prev.tolist(), rows.offset.tolist(), strict=True)) == [
        (0, 99, 100), (0, 101, 102)]


def test_messages_of_an_older_epoch_and_duplicates_never_reach_the_fresh_rows() -> None:
    ledger = PartitionLedger()
    assert ledger.reposition(0, 10) == 0
    for o in (10, 11, 12):
        assert ledger.read(0, 0, o)
    assert not ledger.read(0, 0, 11)  # a re-read after a restart: not handed on twice
    ledger.sent(0, [10, 11, 12], 0)
    assert ledger.fed(0, 10) == (0, 9)
    assert ledger.reposition(0, 13) == 0  # a reader replaced where reading stopped: the same epoch
    assert ledger.reposition(0, 20) == 0  # retention moved it on: still the same chain
    assert ledger.reposition(0, 0) == 1  # moved back (on_offset_reset): only the source starts an epoch
    assert not ledger.read(0, 0, 13)  # the old reader's read is refused
    assert ledger.read(0, 1, 0) and ledger.read(0, 1, 1)
    ledger.sent(0, [0, 1], 1)
    assert ledger.fed(0, 11) is None and ledger.fed(0, 12) is None  # still in flight from epoch 0: dropped
    assert ledger.fed(0, 0) == (1, -1) and ledger.fed(0, 1) == (1, 0)
    assert ledger.fed(0, 1) is None  # a duplicate delivery: dropped, not a new epoch


def test_a_retired_reader_can_put_nothing_and_partitions_take_turns() -> None:
    stop = threading.Event()
    inbox = Inbox(64)
    intake = Intake(inbox, PartitionLedger(), share=8, group=8, stop=stop, threads=Threads())
    old, new, other = object(), object(), object()
    intake.install(0, old, 0)
    intake.install(1, other, 0)
    for o in range(4):
        assert intake.put(0, old, 0, o, tf.constant(b"a"))
    intake.install(0, new, 4)  # the watchdog replaced the reader of partition 0 where it stopped
    assert not intake.put(0, old, 0, 4, tf.constant(b"late"))  # the retired one woke up: refused
    for o in range(4, 8):
        assert intake.put(0, new, 0, o, tf.constant(b"a"))
    for o in range(8):
        assert intake.put(1, other, 0, o, tf.constant(b"b"))
    intake.start()
    deadline = time.monotonic() + 30
    while inbox.size() < 16 and time.monotonic() < deadline:
        time.sleep(0.05)
    _, partitions, offsets = inbox.take_arrived(16)
    got = list(zip(partitions.numpy().tolist(), offsets.numpy().tolist(), strict=True))
    assert sorted(got[:8]) == sorted([(0, o) for o in range(4)] + [(1, o) for o in range(4)])  # in turn
    assert [o for p, o in got if p == 0] == list(range(8))  # each partition in offset order, once
    stop.set()


def test_reader_errors_keep_their_whole_reason_on_one_line() -> None:
    text = "Graph execution error:\n\nDetected at node IteratorGetNext\nFailed to consume: Local: Invalid argument"
    assert one_line(text) == ("Graph execution error: Detected at node IteratorGetNext Failed to consume: "
                              "Local: Invalid argument")
