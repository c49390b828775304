"""A trainer's threads and file descriptors stay where they were once it trains.

The chaos soak judges threads and descriptors flat after warm-up; a client created late (the
dead-letter producer at the first malformed message, once) reads there as growth, and a client
kept after a broker outage would be growth. So: warm up, then dead-letter a malformed message
and kill the broker twice, and after each the trainer's lowest thread and descriptor counts over
a few seconds (short-lived clients, re-reads and checks, come and go) are back where they were.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Producer
from faultlib import Rig, make_rig, own_broker, read_dead_letters, read_trained

from stream_trainer.workbench.broker import LocalBroker

SAMPLES = 8  # one a second: the lowest of them is the standing footprint
BROKER_DOWN_S = 15


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    yield from own_broker(tmp_path_factory, "footprint-broker")


@dataclass(frozen=True)
class Footprint:
    threads: int
    fds: int
    names: Counter[str]  # thread names (librdkafka's say which client) at the lowest count

    def __str__(self) -> str:
        return f"{self.threads} threads, {self.fds} fds"


def _sample(pid: int) -> tuple[Counter[str], int]:
    names: Counter[str] = Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        with suppress(OSError):  # the thread ended while we looked
            names[(task / "comm").read_text().strip()] += 1
    return names, len(os.listdir(f"/proc/{pid}/fd"))


def standing(pid: int) -> Footprint:
    samples = []
    for _ in range(SAMPLES):
        samples.append(_sample(pid))
        time.sleep(1)
    names = min((s[0] for s in samples), key=lambda c: c.total())
    return Footprint(names.total(), min(s[1] for s in samples), names)


def _named_diff(before: Footprint, after: Footprint) -> dict[str, int]:
    return {k: after.names[k] - before.names[k] for k in before.names | after.names
            if after.names[k] != before.names[k]}


@pytest.mark.faults
@pytest.mark.slow
def test_dead_letters_and_broker_kills_leave_no_thread_or_descriptor_behind(tmp_path: Path,
                                                                             broker: LocalBroker) -> None:
    if not broker.running:
        broker.start()
    rig: Rig = make_rig(tmp_path, broker.bootstrap, partitions=2, prefix="footprint")
    log = tmp_path / "trained.log"
    try:
        config = rig.write_config("settings.yaml", rig.settings(kafka__connect_timeout_s=5,
                                                                trainer__loop__trained_log=str(log)))
        producer = rig.producer(config)
        trainer = rig.trainer(config)

        def trains_on(what: str) -> None:
            n = len(read_trained(log))
            rig.wait_until(lambda: len(read_trained(log)) >= n + 40, 240, f"40 more trained messages {what}",
                           alive=(trainer, producer))

        trains_on("to warm up")
        warm = standing(trainer.pid)
        steps: list[tuple[str, Footprint]] = []

        poison = Producer({"bootstrap.servers": rig.bootstrap})
        poison.produce(rig.topic, key=b"poison", value=b"not a pet record", partition=0)
        assert poison.flush(10) == 0
        del poison  # its reconnect attempts would fill the output while the broker is down
        rig.wait_until(lambda: read_dead_letters(rig.bootstrap, rig.dead_letter_topic, timeout_s=2), 120,
                       "the malformed message in the dead-letter topic", alive=(trainer, producer))
        trains_on("after the dead letter")
        steps.append(("the first dead letter", standing(trainer.pid)))

        for kill in (1, 2):
            broker.stop(kill=True)
            time.sleep(BROKER_DOWN_S)
            rig.require_alive(trainer, producer)
            broker.start()
            trains_on(f"after broker kill {kill}")
            steps.append((f"broker kill {kill}", standing(trainer.pid)))

        print("footprint: warm", warm, "; " + "; ".join(f"after {what}: {f}" for what, f in steps))
        for what, after in steps:
            # One descriptor of slack: the trained log and checkpoint files open and close at any second.
            assert after.threads <= warm.threads and after.fds <= warm.fds + 1, (
                f"after {what} the trainer holds {after} (warmed up: {warm}); threads by name "
                f"{_named_diff(warm, after)}")
        assert trainer.stop() == 0, f"the trainer did not stop cleanly{rig.logs()}"
    finally:
        rig.stop_all()
