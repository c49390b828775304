"""The confluent-kafka reader's own guarantees, against the real broker: a full partition is
paused without holding up the others, an offset deleted by retention is resolved and resumed
where ``resolve`` says, and freshness is the record's CreateTime where the producer set it.
(The contract both readers share is parametrised in test_kafka_io.py and the fault scenarios.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import cast

import pytest
from confluent_kafka import Producer, TopicPartition
from confluent_kafka.admin import NewTopic

from producer.sources.synthetic import make_record
from stream_trainer import wire
from stream_trainer.config import KafkaConfig, Settings, SourceConfig, TopicsConfig, TrainerConfig
from stream_trainer.ingest import consumer
from stream_trainer.ingest.consumer import SharedConsumer
from stream_trainer.ingest.consumer_source import ConsumerSource
from stream_trainer.ingest.fresh import FreshRows
from stream_trainer.ingest.inbox import Inbox
from stream_trainer.ingest.inputs import Inputs
from stream_trainer.ingest.intake import Intake
from stream_trainer.ingest.reader import count_consumer
from stream_trainer.kafka import Cluster
from stream_trainer.threads import Threads
from tests.readers import READERS
from tests.test_kafka_io import _produce, _take

CONFLUENT = "confluent-kafka"


def _until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _stop(stop: threading.Event, threads: Threads) -> None:
    """Stop a test's readers and wait for their threads: none outlives its test (a consumer closing
    late moved the next test's count of consumers)."""
    stop.set()
    _until(lambda: not threads.alive(), 30, "the readers' threads to end")


def test_a_partition_whose_share_is_full_is_paused_and_the_others_read_on(
        kafka_bootstrap: str, new_topic: Callable[..., str]) -> None:
    """One thread reads every partition: partition 0's full share must pause it, not block the
    thread, so partition 1's messages still reach the intake; once there is room again, 0 resumes
    at the message it was refused and hands on every offset once, in order."""
    topic = new_topic(partitions=2)
    n = 100
    _produce(kafka_bootstrap, topic, [(0, b"k", f"a{i}".encode()) for i in range(n)])
    stop, threads = threading.Event(), Threads()
    # Nothing takes from the inbox: the pump blocks once it holds 4, and partition 0's share fills.
    src = ConsumerSource(KafkaConfig(bootstrap_servers=kafka_bootstrap), topic, Inbox(4),
                         SourceConfig(poll_timeout_ms=200, reader=CONFLUENT), "tfio-test",
                         resolve=lambda _p, offset: offset, stop=stop, threads=threads, share=8, group=4)
    src.start({0: 0, 1: 0})
    try:
        _until(lambda: src.readers[0].paused and src.intake.full(0), 60, "partition 0 to be paused with a full share")
        _produce(kafka_bootstrap, topic, [(1, b"k", f"b{i}".encode()) for i in range(5)])
        # Handed on (the ledger's read position), not "staged": the pump may already have taken some.
        _until(lambda: src.read_positions().get(1) == 5, 30, "partition 1's messages while partition 0 is paused")
        # The intake's pump takes a group now and then until it blocks on the full inbox, so partition
        # 0 may be between a resume and its next pause here: it is paused again once its share refills.
        _until(lambda: src.readers[0].paused and src.intake.full(0), 30, "partition 0 paused again")
        assert threads.failure() is None
        got = [_take(src.intake.inbox, 30) for _ in range(n + 5)]
        assert [(v, o) for v, p, o in got if p == 0] == [(f"a{i}".encode(), i) for i in range(n)]
        assert [(v, o) for v, p, o in got if p == 1] == [(f"b{i}".encode(), i) for i in range(5)]
        assert threads.failure() is None and src.failure is None
    finally:
        _stop(stop, threads)


def test_an_offset_deleted_by_retention_fails_the_partition_which_resumes_where_resolve_says(
        kafka_bootstrap: str, cluster: Cluster, new_topic: Callable[..., str]) -> None:
    """librdkafka's "offset out of range" (auto.offset.reset=error) is a failure of that partition:
    counted, then ``resolve`` is asked from the read position and reading resumes exactly there."""
    topic = new_topic(partitions=2)
    _produce(kafka_bootstrap, topic, [(p, b"k", f"v{i}".encode()) for p in (0, 1) for i in range(30)])
    for f in cluster.admin.delete_records([TopicPartition(topic, 0, 20)]).values():
        f.result(30)
    asked: list[tuple[int, int]] = []

    def resolve(partition: int, offset: int) -> int:
        asked.append((partition, offset))
        return cluster.watermarks(topic, [partition])[partition].low

    stop, threads = threading.Event(), Threads()
    src = ConsumerSource(KafkaConfig(bootstrap_servers=kafka_bootstrap), topic, Inbox(64),
                         SourceConfig(poll_timeout_ms=200, reader=CONFLUENT), "tfio-test", resolve=resolve, stop=stop,
                         threads=threads, restart_backoff_s=0.1).start({0: 5, 1: 0})
    try:
        got = [_take(src.intake.inbox, 30) for _ in range(40)]
        assert [o for _, p, o in got if p == 0] == list(range(20, 30))
        assert [o for _, p, o in got if p == 1] == list(range(30))  # the other partition read on
        assert asked == [(0, 5)] and src.restarts == 1 and src.failure is None
    finally:
        _stop(stop, threads)


def _pets_topic(cluster: Cluster, timestamp_type: str) -> str:
    name = f"ts-{timestamp_type.lower()}-{time.monotonic_ns()}"
    futures = cluster.admin.create_topics([NewTopic(name, 1, 1, config={"message.timestamp.type": timestamp_type})])
    for f in futures.values():
        f.result(30)
    return name


@pytest.mark.parametrize("reader", READERS)
@pytest.mark.parametrize("timestamp_type", ["CreateTime", "LogAppendTime"])
def test_freshness_is_the_records_create_time_where_the_reader_knows_it_else_the_examples_field(
        reader: str, timestamp_type: str, kafka_config: KafkaConfig, cluster: Cluster) -> None:
    topic = _pets_topic(cluster, timestamp_type)
    field_ms, created_ms = 1234, int(time.time() * 1000) - 3_600_000  # the producer's clock, an hour back
    producer = Producer({"bootstrap.servers": kafka_config.bootstrap_servers})
    for i in range(3):
        value = wire.encode(make_record(i, seed=5, min_size=40, max_size=48), field_ms)
        producer.produce(topic, value=value, partition=0, timestamp=created_ms)
    assert producer.flush(10) == 0
    settings = Settings(kafka=kafka_config, topics=TopicsConfig(train=topic), trainer=TrainerConfig(
        source=SourceConfig(poll_timeout_ms=200, reader=reader)))
    stop, fresh = threading.Event(), FreshRows(64)
    Inputs(settings, cluster, lambda *_: None, {0: 0}, fresh, 0, 1, stop, 1, Threads()).start()
    try:
        assert fresh.wait(3, time.monotonic() + 60) == 3
        rows = fresh.take(3)
        assert rows is not None
        # Only a CreateTime set by the producer is its clock; LogAppendTime is the broker's.
        expected = created_ms if reader == CONFLUENT and timestamp_type == "CreateTime" else field_ms
        assert rows.produce_ts_ms.tolist() == [expected] * 3
    finally:
        stop.set()  # nothing to join: the feeder may wait in the pipeline until the process ends (feeder.py)


def test_the_confluent_reader_holds_one_consumer_for_all_of_a_workers_partitions(
        kafka_bootstrap: str, new_topic: Callable[..., str], monkeypatch: pytest.MonkeyPatch) -> None:
    # The process-wide gauge also moves while earlier tests' readers wind down (CI runs saw 14 -> 14
    # with ours open, and an earlier consumer's close): count the calls of this source's thread,
    # which still set the gauge.
    calls: list[tuple[threading.Thread, int]] = []
    monkeypatch.setattr(consumer, "count_consumer",
                        lambda delta: (calls.append((threading.current_thread(), delta)), count_consumer(delta)))
    topic = new_topic(partitions=4)
    _produce(kafka_bootstrap, topic, [(p, b"k", b"v") for p in range(4)])
    stop, threads = threading.Event(), Threads()
    src = ConsumerSource(KafkaConfig(bootstrap_servers=kafka_bootstrap), topic, Inbox(64),
                         SourceConfig(poll_timeout_ms=200, reader=CONFLUENT), "tfio-test",
                         resolve=lambda _p, offset: offset, stop=stop, threads=threads)
    earlier = set(threading.enumerate())
    src.start(dict.fromkeys(range(4), 0))
    ours = set(threading.enumerate()) - earlier

    def held() -> int:
        return sum(delta for thread, delta in calls if thread in ours)

    try:
        assert sorted(_take(src.intake.inbox, 30)[1] for _ in range(4)) == [0, 1, 2, 3]
        assert held() == 1
    finally:
        _stop(stop, threads)
    assert held() == 0, "the consumer is closed on stop"


def test_the_read_ahead_is_32_mib_for_all_partitions_unless_kafka_client_sets_it() -> None:
    """librdkafka's default (64 MiB) held ~18 s of training; one bound for the worker, as with
    tensorflow-io's readers together. Checked without a broker: creating the consumer connects to nothing."""
    def queued_kib(client: dict[str, str]) -> object:
        shared = SharedConsumer(KafkaConfig(bootstrap_servers="127.0.0.1:9", client=client), "t", "g", 100,
                                cast(Intake, None), threading.Event(), on_partition_failed=lambda *_: None,
                                on_consumer_failed=lambda _: False, on_done=lambda _: None)
        return shared._conf["queued.max.messages.kbytes"]

    assert queued_kib({}) == 32 * 1024
    assert queued_kib({"queued.max.messages.kbytes": "65536"}) == "65536"
