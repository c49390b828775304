"""Scenario 2: the broker goes away mid-stream and comes back on the same port and data directory.

The module runs its own broker (never the session's, which other tests share). The broker is
stopped gracefully (SIGTERM, controlled shutdown) or killed (SIGKILL), kept down for longer than
the clients' timeouts (``kafka.connect_timeout_s`` = 5 s, the 0.5 s poll timeout, the feeder's 2 s
rebuild backoff; the slow variant also outlasts librdkafka's 60 s ``socket.timeout.ms``), then
started again. Producer and trainer must ride it out by themselves: neither process exits, every
offset the topic holds afterwards (including everything produced during and after the outage) is
trained, and the trainer's metrics show the outage (a rebuilt input pipeline, a long input wait).
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from faultlib import Rig, free_port, log_ends, make_rig, metric, missing_offsets, own_broker, read_trained, scrape

from stream_trainer.config import KafkaConfig
from stream_trainer.kafka import Cluster
from stream_trainer.workbench.broker import LocalBroker
from tests.readers import READERS_SLOW_OTHER

# The 5.0 s bucket of stream_trainer_input_wait_seconds: waits longer than it are outages, not jitter.
LONG_WAIT_BUCKET = "5.0"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    yield from own_broker(tmp_path_factory, "restart-broker")


@pytest.fixture()
def restart_rig(tmp_path: Path, broker: LocalBroker, reader: str) -> Iterator[Rig]:
    if not broker.running:  # a failed test may have left it down
        broker.start()
    r = make_rig(tmp_path, broker.bootstrap, partitions=2, prefix="restart", reader=reader)
    try:
        yield r
    finally:
        r.stop_all()


def _long_waits(text: str) -> float:
    """Input waits longer than 5 s so far: histogram count minus the 5 s bucket."""
    return (metric(text, "stream_trainer_input_wait_seconds_count")
            - metric(text, "stream_trainer_input_wait_seconds_bucket", le=LONG_WAIT_BUCKET))


def _outage(rig: Rig, broker: LocalBroker, kill: bool, down_s: float) -> dict[str, object]:
    port = free_port()
    log = rig.tmp / "trained.log"
    settings = rig.settings(kafka__connect_timeout_s=5, trainer__metrics__port=port,
                            trainer__loop__trained_log=str(log))
    config = rig.write_config("settings.yaml", settings)
    producer = rig.producer(config)
    trainer = rig.trainer(config)
    rig.wait_until(lambda: len(read_trained(log)) >= 40, 180, "40 trained messages before the outage",
                   alive=(trainer, producer))
    before = scrape(port)

    went_down = time.monotonic()
    broker.stop(kill=kill)
    while time.monotonic() - went_down < down_s:
        rig.require_alive(trainer, producer)  # neither gives up while the broker is away
        time.sleep(0.5)
    trained_at_restart = len(read_trained(log))
    broker.start()  # same port, same data directory
    came_back = time.monotonic()
    rig.wait_until(lambda: len(read_trained(log)) > trained_at_restart, 180,
                   "the trainer to train again after the restart", alive=(trainer, producer), interval_s=0.1)
    recovery_s = time.monotonic() - came_back

    # Everything the topic holds now (produced before, during and after the outage) gets trained.
    ends = log_ends(rig.bootstrap, rig.topic)
    rig.wait_until(lambda: not missing_offsets(Counter((p, o) for p, o, _ in read_trained(log)), ends), 180,
                   f"every offset below {ends} to be trained", alive=(trainer, producer))
    after = scrape(port)
    assert trainer.stop() == 0, f"the trainer did not stop cleanly{rig.logs()}"
    assert producer.stop() == 0, f"the producer did not stop cleanly{rig.logs()}"

    summary = next((line for line in producer.output if line.startswith("summary ")), "")
    failed = re.search(r"\bfailed=(\d+)", summary)
    assert failed and failed.group(1) == "0", f"the producer lost messages to the outage: {summary!r}"
    # tfio 0.37.1's reader survives "all brokers down" by itself (only fatal errors end it), so a
    # rebuilt pipeline is reported but not required; the wait for input is what every outage shows.
    restarts = metric(after, "stream_trainer_source_restarts_total") - metric(
        before, "stream_trainer_source_restarts_total")
    long_waits = _long_waits(after) - _long_waits(before)
    assert long_waits >= 1, "stream_trainer_input_wait_seconds shows no wait longer than 5 s"

    counts = Counter((p, o) for p, o, _ in read_trained(log))
    report = {"stop": "SIGKILL" if kill else "SIGTERM", "down_s": round(down_s, 1),
              "recovery_s_after_broker_ready": round(recovery_s, 1), "source_restarts": restarts,
              "input_waits_over_5s": long_waits, "offsets_checked": sum(ends.values()), "skipped": 0,
              "duplicates": sum(n - 1 for n in counts.values())}
    (rig.tmp / "report.json").write_text(json.dumps(report, indent=1))
    print(f"broker-restart report: {json.dumps(report)}")
    return report


@pytest.mark.faults
@pytest.mark.slow
@pytest.mark.parametrize("reader", READERS_SLOW_OTHER)
def test_graceful_broker_restart_is_ridden_out_and_nothing_is_lost(restart_rig: Rig, broker: LocalBroker) -> None:
    _outage(restart_rig, broker, kill=False, down_s=20)


@pytest.mark.faults
@pytest.mark.slow
@pytest.mark.parametrize("reader", READERS_SLOW_OTHER)
def test_killed_broker_restart_is_ridden_out_and_nothing_is_lost(restart_rig: Rig, broker: LocalBroker) -> None:
    _outage(restart_rig, broker, kill=True, down_s=20)


@pytest.mark.faults
@pytest.mark.slow
def test_broker_down_longer_than_the_socket_timeout_is_ridden_out(restart_rig: Rig, broker: LocalBroker) -> None:
    _outage(restart_rig, broker, kill=True, down_s=75)


@pytest.mark.faults
@pytest.mark.slow
@pytest.mark.parametrize("reader", READERS_SLOW_OTHER)
def test_a_recreated_topic_fails_the_readers_which_restart_and_train_the_new_topic_from_its_start(
        restart_rig: Rig) -> None:
    """The topic is deleted under a running trainer and recreated empty. tfio only logs 'unknown
    topic' and waits; the reader watchdog finds each reader's position beyond the new log end,
    replaces the reader at the new start (``on_offset_reset: earliest``), and the refilled topic
    is trained from offset 0: nothing of it skipped, nothing of the old topic mistaken for it."""
    rig = restart_rig
    port = free_port()
    log = rig.tmp / "trained.log"
    settings = rig.settings(trainer__loop__trained_log=str(log), trainer__metrics__port=port,
                            trainer__source__on_offset_reset="earliest", trainer__source__max_restarts=30,
                            trainer__source__stall_timeout_s=10)
    config = rig.write_config("settings.yaml", settings)
    producer = rig.producer(config)
    trainer = rig.trainer(config)
    rig.wait_until(lambda: len(read_trained(log)) >= 40, 180, "40 trained messages", alive=(trainer, producer))
    assert producer.stop() == 0
    before = len(read_trained(log))
    old_ends = log_ends(rig.bootstrap, rig.topic)

    def restarts_by_partition() -> dict[int, float]:
        text = scrape(port)
        return {p: metric(text, "stream_trainer_source_restarts_total", partition=str(p))
                for p in range(rig.partitions)}

    cluster = Cluster(KafkaConfig(bootstrap_servers=rig.bootstrap))
    try:
        cluster.admin.delete_topics([rig.topic])[rig.topic].result(30)
        rig.wait_until(lambda: rig.topic not in cluster.admin.list_topics(timeout=5).topics, 60, "topic deleted")
        # Not a synchronisation point but the fault itself: the topic stays missing for 3 s (tfio only
        # logs "unknown topic" and waits), which the trainer must ride out.
        time.sleep(3)
        rig.require_alive(trainer)
        missing = restarts_by_partition()
        cluster.ensure_topics({rig.topic: rig.partitions})
    finally:
        cluster.close()
    # The readers move back once they see the recreated topic (empty: their positions are beyond
    # its end): the watchdog replaces each partition's reader, which its restart counter shows.
    rig.wait_until(lambda: all(n > missing[p] for p, n in restarts_by_partition().items()), 120,
                   "every reader to move back to the new topic's start", alive=(trainer,))
    restarts = metric(scrape(port), "stream_trainer_source_restarts_total")
    refill = rig.producer(config, "producer-2")
    rig.wait_until(lambda: sum(log_ends(rig.bootstrap, rig.topic).values()) >= 40, 120, "the new topic refilled",
                   alive=(trainer, refill))
    new_ends = log_ends(rig.bootstrap, rig.topic)
    after = lambda: Counter((p, o) for p, o, _ in read_trained(log)[before:])  # noqa: E731
    rig.wait_until(lambda: not missing_offsets(after(), new_ends), 180,
                   f"every offset of the recreated topic below {new_ends} trained", alive=(trainer, refill))
    assert trainer.stop() == 0, f"the trainer did not stop cleanly{rig.logs()}"
    refill.stop()
    report = {"old_ends": old_ends, "new_ends": new_ends, "source_restarts": restarts, "skipped": 0}
    print(f"recreated-topic report: {json.dumps(report)}")
