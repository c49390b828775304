"""``Cluster.read_range`` and ``Cluster.read_offsets``: the re-reads behind dead letters, evaluation
and the replay store, against the session's real broker."""

from __future__ import annotations

from collections.abc import Callable

from confluent_kafka import Message

from stream_trainer.kafka import Cluster


def _fill(cluster: Cluster, topic: str, count: int) -> None:
    for i in range(count):
        cluster.producer.produce(topic, f"m{i}".encode(), partition=0)
    assert cluster.producer.flush(30) == 0


def _values(messages: list[Message]) -> list[bytes | None]:
    return [m.value() for m in messages]


def test_read_range_returns_exactly_the_half_open_range(cluster: Cluster, new_topic: Callable[..., str]) -> None:
    topic = new_topic(1)
    _fill(cluster, topic, 30)
    got = cluster.read_range(topic, 0, 5, 12)
    assert [m.offset() for m in got] == list(range(5, 12))
    assert _values(got) == [f"m{i}".encode() for i in range(5, 12)]


def test_read_range_past_the_log_end_stops_there_and_a_negative_start_reads_from_the_beginning(
        cluster: Cluster, new_topic: Callable[..., str]) -> None:
    topic = new_topic(1)
    _fill(cluster, topic, 30)
    assert [m.offset() for m in cluster.read_range(topic, 0, 25, 400, timeout_s=20)] == list(range(25, 30))
    assert [m.offset() for m in cluster.read_range(topic, 0, -2, 3)] == [0, 1, 2]
    assert cluster.read_range(topic, 0, 7, 7) == []


def test_read_offsets_finds_sparse_offsets_with_seeks_and_leaves_out_what_does_not_exist(
        cluster: Cluster, new_topic: Callable[..., str]) -> None:
    topic = new_topic(1)
    _fill(cluster, topic, 300)
    wanted = [2, 3, 150, 280, 299, 500]
    got = cluster.read_offsets(topic, 0, wanted, max_gap=10)
    assert sorted(got) == [2, 3, 150, 280, 299]
    assert all(got[o].value() == f"m{o}".encode() for o in got)
    assert cluster.read_offsets(topic, 0, []) == {}
