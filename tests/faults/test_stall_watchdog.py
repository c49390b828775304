"""The stall watchdog times a stall only over what it saw (issue 20's chaos soak, exit 2 "unprompted").

The 60-minute chaos soak's single trainer exited 2 by itself right after a broker outage of ~47 s:
its readers' stall clocks (``trainer.source.stall_timeout_s`` 15 s) had run through the outage,
while no watchdog round could read the watermarks, so the first round that could replaced every
reader at once, one failure each: six partitions are six failures, more than ``max_restarts`` 5.

The module runs its own broker (never the session's, which other tests share): it is killed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from confluent_kafka import Producer
from faultlib import own_broker

from stream_trainer import tfenv
from stream_trainer.config import KafkaConfig, Settings, SourceConfig, TopicsConfig, TrainerConfig
from stream_trainer.ingest.fresh import FreshRows
from stream_trainer.ingest.inbox import Inbox
from stream_trainer.ingest.inputs import Inputs
from stream_trainer.ingest.source import source_class
from stream_trainer.kafka import Cluster, Watermarks
from stream_trainer.threads import Threads
from stream_trainer.workbench.broker import LocalBroker
from tests.test_input_path import _value

pytestmark = pytest.mark.faults
PARTITIONS = 6  # more than max_restarts (5): one replacement each is the trainer's end
STALL_S = 3.0  # the caught-up test's rounds are the test's own
OUTAGE_STALL_S = 15.0  # the chaos soak's: above librdkafka 1.5's reconnect backoff (up to 10 s)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    yield from own_broker(tmp_path_factory, "stall-broker")


def _inputs(broker: LocalBroker, topic: str, stop: threading.Event, fresh: FreshRows,
            stall_s: float) -> tuple[Inputs, Threads]:
    kafka = KafkaConfig(bootstrap_servers=broker.bootstrap, connect_timeout_s=10)
    settings = Settings(kafka=kafka, topics=TopicsConfig(train=topic), trainer=TrainerConfig(
        source=SourceConfig(stall_timeout_s=stall_s, poll_timeout_ms=200, reader=tfenv.default_reader())))
    cluster = Cluster(kafka)
    threads = Threads()
    starts = dict.fromkeys(range(PARTITIONS), 0)
    return Inputs(settings, cluster, lambda *_: None, starts, fresh, 0, 1, stop, 1, threads).start(), threads


def _topic(broker: LocalBroker, name: str) -> str:
    cluster = Cluster(KafkaConfig(bootstrap_servers=broker.bootstrap, connect_timeout_s=10))
    try:
        cluster.ensure_topics({name: PARTITIONS})
    finally:
        cluster.close()
    return name


# A guard, not the proof (the rounds test below fails without the fix; this one failed without it
# only at a 3 s stall timeout): 68 s of a real broker pause, so in make test-faults.
@pytest.mark.slow
def test_a_broker_outage_longer_than_the_stall_timeout_replaces_no_reader(broker: LocalBroker) -> None:
    topic = _topic(broker, f"stall-pause-{time.time_ns()}")
    producing = threading.Event()
    producing.set()
    sent = [0]

    def produce() -> None:  # every partition gets messages before, during (buffered) and after the pause
        p = Producer({"bootstrap.servers": broker.bootstrap, "linger.ms": 5})
        while producing.is_set():
            p.produce(topic, value=_value(sent[0]), partition=sent[0] % PARTITIONS)
            sent[0] += 1
            p.poll(0)
            time.sleep(0.05)
        p.flush(30)

    stop = threading.Event()
    fresh = FreshRows(100_000)  # never full: a full intake would pause the stall clocks by itself
    inputs, threads = _inputs(broker, topic, stop, fresh, OUTAGE_STALL_S)
    feeder = threading.Thread(target=produce, daemon=True)
    feeder.start()
    try:
        assert fresh.wait(2 * PARTITIONS, time.monotonic() + 60) >= 2 * PARTITIONS
        broker.stop(kill=True)
        time.sleep(2 * OUTAGE_STALL_S)  # every reader "hands on nothing while messages wait" for 2 stall timeouts
        broker.start()  # same port, same data
        before = len(fresh)
        deadline = time.monotonic() + 60
        while len(fresh) <= before + PARTITIONS and time.monotonic() < deadline and inputs.failure() is None:
            time.sleep(0.5)  # the readers come back by themselves (librdkafka reconnects)
        time.sleep(OUTAGE_STALL_S)
        print(f"after the outage: retired {inputs.source.retired}, restarts {inputs.source.restarts}, "
              f"failure {inputs.failure()}, rows {before} -> {len(fresh)}")
        assert inputs.failure() is None and threads.failure() is None, inputs.failure()
        assert inputs.source.retired == 0, f"{inputs.source.retired} readers replaced for the broker's outage"
        assert len(fresh) > before + PARTITIONS, "the readers did not read on after the outage: it proved nothing"
    finally:
        producing.clear()
        stop.set()
        if not broker.running:
            broker.start()
        feeder.join(60)


def test_a_caught_up_partition_that_gets_a_message_has_not_stalled(broker: LocalBroker) -> None:
    """A partition idle for longer than the stall timeout, then one message: the watchdog round that
    sees it before its reader does must not take the reader for stalled (nothing waited until then).
    The source alone, without the input watch's thread: this test makes each round itself."""
    topic = _topic(broker, f"stall-idle-{time.time_ns()}")
    stop = threading.Event()
    source = source_class(tfenv.default_reader())(
        KafkaConfig(bootstrap_servers=broker.bootstrap), topic, Inbox(64),
        SourceConfig(stall_timeout_s=STALL_S, poll_timeout_ms=200, reader=tfenv.default_reader()), "stall-idle",
        resolve=lambda _p, offset: offset, stop=stop, threads=Threads()).start(dict.fromkeys(range(PARTITIONS), 0))
    try:
        positions = source.positions()

        def rounds(seconds: float, high: int) -> None:  # watchdog rounds as the input watch makes them
            deadline = time.monotonic() + seconds
            while True:
                source.watch(positions, {p: Watermarks(0, pos + high) for p, pos in positions.items()})
                if time.monotonic() >= deadline:
                    return
                time.sleep(STALL_S / 4)

        rounds(STALL_S + 1, 0)  # caught up for longer than the stall timeout
        rounds(0, 1)  # one message each, seen by the watchdog first
        assert source.retired == 0 and source.failure is None, (source.retired, source.failure)
        # A round that comes late (a broker paused through it) has seen nothing: no stall yet.
        time.sleep(STALL_S + 1)
        rounds(0, 1)
        assert source.retired == 0 and source.failure is None, (source.retired, source.failure)
        rounds(STALL_S + 1, 1)  # ...which nobody reads (these watermarks are the test's): now it is a stall
        assert source.retired == PARTITIONS, "the watchdog no longer replaces a stalled reader"
    finally:
        stop.set()
