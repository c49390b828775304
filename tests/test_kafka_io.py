"""The Kafka plumbing against the real 3.9.1 broker: confluent-kafka both ways, both readers
(tensorflow-io's librdkafka 1.5.0, confluent-kafka's one consumer) reading from an offset with
positions, idle topics, and group offsets."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable

import pytest
import tensorflow as tf
from confluent_kafka import Consumer, Producer, TopicPartition

from stream_trainer import metrics
from stream_trainer.config import KafkaConfig, SourceConfig
from stream_trainer.ingest import source
from stream_trainer.ingest.inbox import END_PARTITION, Inbox
from stream_trainer.ingest.reader import read_ahead
from stream_trainer.ingest.source import source_class
from stream_trainer.ingest.supervisor import KafkaSource
from stream_trainer.kafka import Cluster
from stream_trainer.threads import Threads
from tests.readers import READERS
from tests.stacks import needs_tfio


def _produce(bootstrap: str, topic: str, items: list[tuple[int, bytes, bytes]]) -> None:
    p = Producer({"bootstrap.servers": bootstrap})
    for partition, key, value in items:
        p.produce(topic, key=key, value=value, partition=partition)
    assert p.flush(10) == 0


# tfio's reader loops inside C++ until a message comes and ignores cancellation, so destroying an
# iterator whose reader is blocked would wait forever. Tests keep their iterators alive instead
# (the trainer's readers run in threads that live as long as the process).
_ALIVE: list[object] = []


def _read(reader: str, kafka_bootstrap: str, topic: str, starts: dict[int, int],
          stops: dict[int, int] | None = None, poll_timeout_ms: int = 200) -> Inbox:
    """The trainer's Kafka readers (``reader``) for ``starts``, putting what they read into a fresh inbox."""
    inbox = Inbox(64)
    cfg = SourceConfig(poll_timeout_ms=poll_timeout_ms, reader=reader)
    source_class(reader)(KafkaConfig(bootstrap_servers=kafka_bootstrap), topic, inbox, cfg, "tfio-test",
                         resolve=lambda _p, offset: offset, stop=threading.Event(), threads=Threads()
                         ).start(starts, stops)
    return inbox


def _take(inbox: Inbox, timeout_s: float) -> tuple[bytes, int, int]:
    """One message out of the inbox: (value, partition, offset); fails instead of hanging."""
    box: list[tuple[bytes, int, int]] = []

    def get() -> None:
        value, partition, offset = inbox.queue.dequeue()
        box.append((value.numpy(), int(partition), int(offset)))

    t = threading.Thread(target=get, daemon=True)
    t.start()
    t.join(timeout_s)
    assert box, f"no message within {timeout_s} s"
    return box[0]


def _keep(iterator):
    _ALIVE.append(iterator)
    return iterator


def _next_within(iterator, timeout_s: float):
    """next(iterator) on a helper thread, so a blocked tfio read fails the test instead of hanging it."""
    box: list[object] = []
    t = threading.Thread(target=lambda: box.append(next(iterator, StopIteration)), daemon=True)
    t.start()
    t.join(timeout_s)
    assert box, f"no element within {timeout_s} s"
    return box[0]


def test_confluent_round_trip_over_several_partitions(kafka_bootstrap: str, new_topic: Callable[..., str]) -> None:
    topic = new_topic(partitions=3)
    sent = {(p, f"k{p}-{i}".encode(), f"v{p}-{i}".encode()) for p in range(3) for i in range(5)}
    _produce(kafka_bootstrap, topic, sorted(sent))
    c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"rt-{topic}", "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    got = set()
    deadline = time.monotonic() + 30
    while len(got) < len(sent) and time.monotonic() < deadline:
        msg = c.poll(0.5)
        if msg is not None and msg.error() is None:
            got.add((msg.partition(), msg.key(), msg.value()))
    c.close()
    assert got == sent


@pytest.mark.parametrize("reader", READERS)
def test_reader_reads_from_the_given_offset_with_partition_and_offset(
        reader: str, kafka_bootstrap: str, new_topic: Callable[..., str]) -> None:
    topic = new_topic(partitions=2)
    _produce(kafka_bootstrap, topic, [(1, f"k{i}".encode(), f"v{i}".encode()) for i in range(10)])
    inbox = _read(reader, kafka_bootstrap, topic, {1: 4})
    rows = [_take(inbox, 30) for _ in range(6)]
    assert rows == [(f"v{i}".encode(), 1, i) for i in range(4, 10)]


@needs_tfio
def test_tfio_yields_partition_colon_offset_strings(kafka_bootstrap: str, new_topic: Callable[..., str]) -> None:
    import tensorflow_io.kafka as tfio_kafka

    topic = new_topic(partitions=1)
    _produce(kafka_bootstrap, topic, [(0, b"a", b"x"), (0, b"b", b"y")])
    # A group id is required: with tfio's default (empty) group librdkafka 1.5 reads nothing.
    ds = tfio_kafka.KafkaDataset([f"{topic}:0:1:-1"], servers=kafka_bootstrap, group="tfio-test", eof=False,
                                 message_key=True, message_offset=True)
    value, key, position = _next_within(_keep(iter(ds)), 30)
    assert (value.numpy(), key.numpy(), position.numpy()) == (b"y", b"b", b"0:1")


@pytest.mark.parametrize("reader", READERS)
def test_idle_topic_does_not_end_the_stream_and_late_messages_arrive(
        reader: str, kafka_bootstrap: str, new_topic: Callable[..., str]) -> None:
    topic = new_topic(partitions=2)
    _produce(kafka_bootstrap, topic, [(0, b"k", b"early")])
    inbox = _read(reader, kafka_bootstrap, topic, {0: 0, 1: 0})
    assert _take(inbox, 30) == (b"early", 0, 0)
    # Both partitions are now idle for longer than several poll timeouts; the readers must wait.
    timer = threading.Timer(2.0, _produce, (kafka_bootstrap, topic, [(1, b"k", b"late")]))
    timer.start()
    late = _take(inbox, 30)
    timer.join()
    assert late == (b"late", 1, 0)


@pytest.mark.parametrize("reader", READERS)
def test_idle_partition_does_not_hold_back_busy_ones(reader: str, kafka_bootstrap: str,
                                                     new_topic: Callable[..., str]) -> None:
    topic = new_topic(partitions=3)
    _produce(kafka_bootstrap, topic, [(2, b"k", f"v{i}".encode()) for i in range(20)])
    inbox = _read(reader, kafka_bootstrap, topic, {0: 0, 1: 0, 2: 0})
    got = [_take(inbox, 30) for _ in range(20)]
    assert got == [(f"v{i}".encode(), 2, i) for i in range(20)]  # in offset order within the partition


def test_committed_group_offsets_read_back(kafka_config: KafkaConfig, new_topic: Callable[..., str]) -> None:
    topic = new_topic(partitions=2)
    _produce(kafka_config.bootstrap_servers, topic, [(p, b"k", b"v") for p in (0, 1) for _ in range(5)])
    writer = Cluster(kafka_config, group_id=f"g-{topic}")
    writer.commit(topic, {0: 3, 1: 5})
    writer.close()
    reader = Cluster(kafka_config, group_id=f"g-{topic}")
    assert reader.committed(topic, [0, 1]) == {0: 3, 1: 5}
    marks = reader.watermarks(topic, [0, 1])
    assert {p: m.high for p, m in marks.items()} == {0: 5, 1: 5}
    reader.close()


def test_group_without_commits_has_no_offsets(cluster: Cluster, new_topic: Callable[..., str]) -> None:
    topic = new_topic(partitions=2)
    assert cluster.committed(topic, [0, 1]) == {}


def test_missing_topic_is_a_config_error_naming_it(cluster: Cluster) -> None:
    import pytest

    from stream_trainer.errors import ConfigError

    with pytest.raises(ConfigError, match="topic 'no-such-topic' does not exist"):
        cluster.partitions("no-such-topic")


def test_worker_shares_split_partitions_without_overlap() -> None:
    parts = list(range(7))
    shares = [source.assigned_partitions(parts, SourceConfig(), i, 3) for i in range(3)]
    assert sorted(p for s in shares for p in s) == parts
    assert source.assigned_partitions(parts, SourceConfig(partitions=[5, 1, 9])) == [1, 5]


@needs_tfio
def test_tf_is_importable_with_tfio_kafka() -> None:
    # A wrong tfio/TF pairing fails at import time with an undefined-symbol error.
    import tensorflow_io.kafka  # noqa: F401

    assert tf.__version__.startswith("2.16")
    _ = TopicPartition


@pytest.mark.parametrize("reader", READERS)
def test_bounded_read_ends_at_the_stop_offsets(reader: str, kafka_bootstrap: str,
                                               new_topic: Callable[..., str]) -> None:
    topic = new_topic(partitions=2)
    _produce(kafka_bootstrap, topic, [(p, b"k", b"v") for p in (0, 1) for _ in range(3)])
    inbox = _read(reader, kafka_bootstrap, topic, {0: 1, 1: 0}, stops={0: 3, 1: 3})
    got = [_take(inbox, 30) for _ in range(6)]
    assert sorted((p, o) for _, p, o in got[:5]) == [(0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert got[5][1] == END_PARTITION  # then the end marker, once every partition is done


@pytest.mark.parametrize("reader", READERS)
def test_partitions_with_a_backlog_take_turns_from_the_first_group(
        reader: str, kafka_bootstrap: str, new_topic: Callable[..., str]) -> None:
    """After a restart with a backlog every partition reaches the decoder from the start, not one
    partition's whole read-ahead first."""
    topic = new_topic(partitions=2)
    _produce(kafka_bootstrap, topic, [(p, b"k", b"v" * 1000) for p in (0, 1) for _ in range(600)])
    inbox = _read(reader, kafka_bootstrap, topic, {0: 0, 1: 0})
    time.sleep(5)  # the readers connect and fill their shares while nothing is decoded
    taken = [_take(inbox, 30)[1] for _ in range(384)]
    # The inbox holds two decode groups (128): those may be one partition's alone when the other's
    # reader connected later. From there on the partitions take turns (before: hundreds from one).
    later = taken[128:]
    assert later.count(0) >= 64 and later.count(1) >= 64, taken


def test_read_ahead_is_the_workers_split_over_its_partitions_at_least_four_fetches_each() -> None:
    kafka = KafkaConfig()
    assert read_ahead(kafka, 1) == read_ahead(kafka) == ["queued.max.messages.kbytes=32768"]
    assert read_ahead(kafka, 4) == ["queued.max.messages.kbytes=8192"]
    assert read_ahead(kafka, 16) == read_ahead(kafka, 64) == ["queued.max.messages.kbytes=4096"]
    smaller_fetches = KafkaConfig(client={"fetch.message.max.bytes": "524288"})
    assert read_ahead(smaller_fetches, 4) == ["queued.max.messages.kbytes=4096"]
    assert read_ahead(KafkaConfig(client={"queued.max.messages.kbytes": "1024"}), 4) == []  # the user's wins


@needs_tfio
def test_each_reader_gets_its_share_of_the_read_ahead_and_the_inbox_gauge_counts_what_waits(
        kafka_bootstrap: str, new_topic: Callable[..., str]) -> None:
    topic = new_topic(partitions=5)
    _produce(kafka_bootstrap, topic, [(p, b"k", b"v" * 1000) for p in range(4) for _ in range(300)])
    src = KafkaSource(KafkaConfig(bootstrap_servers=kafka_bootstrap), topic, Inbox(64), SourceConfig(), "tfio-test",
                      resolve=lambda _p, offset: offset, stop=threading.Event(), threads=Threads())
    src.start(dict.fromkeys(range(4), 0))
    shares = {p: [c for c in r._config if c.startswith("queued.max.messages.kbytes=")]
              for p, r in src.readers.items()}
    assert shares == {p: ["queued.max.messages.kbytes=8192"] for p in range(4)}, shares  # 32 MiB over 4
    src.add(4, 0)  # a partition added while running: 32 fetches over 5, rounded down
    assert "queued.max.messages.kbytes=6144" in src.readers[4]._config
    deadline = time.monotonic() + 30
    # Nothing decodes: the inbox (64) fills, the pump blocks with a group in hand, and the gauge says so.
    while (metrics.REGISTRY.get_sample_value("stream_trainer_inbox_messages") or 0) <= 64:
        assert time.monotonic() < deadline, metrics.REGISTRY.get_sample_value("stream_trainer_inbox_messages")
        time.sleep(0.2)


@pytest.mark.parametrize("reader", READERS)
def test_a_partition_ending_in_a_transaction_marker_is_caught_up_not_stalled(
        reader: str, kafka_config: KafkaConfig, cluster: Cluster, new_topic: Callable[..., str]) -> None:
    """position < high watermark for ever (the commit marker): the watchdog must not replace it."""
    from stream_trainer.config import Settings, TopicsConfig, TrainerConfig
    from stream_trainer.ingest.fresh import FreshRows
    from stream_trainer.ingest.inputs import Inputs
    from stream_trainer.ingest.reader import live_consumers
    from tests.test_input_path import _value

    topic = new_topic(partitions=1)
    p = Producer({"bootstrap.servers": kafka_config.bootstrap_servers, "transactional.id": f"tx-{topic}"})
    p.init_transactions(30)
    p.begin_transaction()
    for i in range(3):
        p.produce(topic, value=_value(i), partition=0)
    p.commit_transaction(30)
    deadline = time.monotonic() + 30
    while cluster.watermarks(topic, [0])[0].high < 4 and time.monotonic() < deadline:  # 3 records, 1 marker
        time.sleep(0.2)
    assert cluster.watermarks(topic, [0])[0].high == 4
    stall_s = 1.0
    settings = Settings(kafka=kafka_config, topics=TopicsConfig(train=topic), trainer=TrainerConfig(
        source=SourceConfig(stall_timeout_s=stall_s, poll_timeout_ms=200, reader=reader)))
    stop = threading.Event()
    threads = Threads()
    fresh = FreshRows(64)
    consumers_before = live_consumers()
    inputs = Inputs(settings, cluster, lambda *_: None, {0: 0}, fresh, 0, 1, stop, 1, threads).start()
    try:
        assert fresh.wait(3, time.monotonic() + 60) == 3
        time.sleep(6 * stall_s)  # the watchdog looks every stall_s / 4
        assert inputs.source.retired == 0 and inputs.source.restarts == 0
        assert live_consumers() - consumers_before == 1
        assert threads.failure() is None and inputs.failure() is None
    finally:
        stop.set()


@pytest.mark.parametrize("reader", READERS)
def test_replaced_readers_and_a_duplicate_delivery_skip_nothing_and_hand_on_each_offset_once(
        reader: str, kafka_bootstrap: str, new_topic: Callable[..., str]) -> None:
    """Readers replaced mid-stream (the watchdog's path) and a message delivered twice: the feeder
    sees every offset exactly once, in order, nothing skipped."""
    topic = new_topic(partitions=1)
    n = 400
    _produce(kafka_bootstrap, topic, [(0, b"k", f"v{i}".encode()) for i in range(n)])
    src = source_class(reader)(KafkaConfig(bootstrap_servers=kafka_bootstrap), topic, Inbox(64),
                               SourceConfig(poll_timeout_ms=200, reader=reader), "tfio-test",
                               resolve=lambda _p, offset: offset, stop=threading.Event(), threads=Threads(),
                               share=16, group=16).start({0: 0})
    fed: list[int] = []
    delivered: list[bool] = []
    duplicates: list[threading.Thread] = []
    while len(fed) < n:
        _, p, o = _take(src.intake.inbox, 30)
        if len(fed) in (50, 150, 250):  # mid-batch: messages staged, in the inbox and in flight
            src._replace(src.readers[0], "replaced by the test")
        if len(fed) == 100:  # the current reader delivers an offset it already handed on
            # From a thread of its own, as a reader would: a full share blocks the put until this
            # loop has taken more, which it could not do if it were the one blocked.
            reader = src.readers[0]
            duplicates.append(threading.Thread(target=lambda r=reader, o=fed[-1]: delivered.append(
                src.intake.put(0, r, r.epoch, o, tf.constant(b"again"))), daemon=True))
            duplicates[0].start()
        got = src.ledger.fed(p, o)
        if got is not None:
            fed.append(o)
    assert fed == list(range(n))
    duplicates[0].join(30)
    assert delivered == [True], "the duplicate never reached the intake: the test proved nothing"
    late: list[tuple[bytes, int, int]] = []  # what the duplicate brought into the inbox after the loop
    with contextlib.suppress(AssertionError):  # _take's "no message": nothing more came
        while len(late) < 5:
            late.append(_take(src.intake.inbox, 2))
    assert all(src.ledger.fed(p, o) is None for _, p, o in late), f"handed on twice: {[o for *_, o in late]}"
    assert src.retired == 3
