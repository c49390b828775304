"""The chaos soak's faults: a seeded schedule, and one injector per kind.

The schedule draws kinds from a shuffled deck (every kind once before any kind twice), so even a
5-minute run meets most of them, and spaces them 30-60 s apart. A fault that falls due while the
previous one still runs waits for it (the delay is recorded). Each injector returns what it did;
the soak writes that into the report and marks the start on every plot.
"""

from __future__ import annotations

import logging
import random
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from stream_trainer.workbench.broker import LocalBroker
from stream_trainer.workbench.soak import messages

log = logging.getLogger(__name__)

KINDS = ("broker_kill", "broker_pause", "poison_burst", "bomb_burst", "transactional_producer",
         "partitions_added", "eval_topic_emptied", "dead_letter_unwritable", "trainer_kill")
NEEDS_LOCAL_BROKER = {"broker_kill", "broker_pause"}
GAP_S = (30.0, 60.0)
BROKER_DOWN_S = 5.0  # SIGKILL, then this long before the restart (which itself takes ~10-20 s)
DEAD_LETTER_GONE_S = 20.0  # ten of the dead-letter worker's 2 s retries
MAX_PARTITIONS = 8
TIMEOUT_S = 30.0


def schedule(seed: int, duration_s: float, kinds: tuple[str, ...] = KINDS) -> list[tuple[float, str]]:
    """(seconds after the start, kind) for every fault before ``duration_s``: gaps of 30-60 s."""
    rng = random.Random(seed)
    out: list[tuple[float, str]] = []
    deck: list[str] = []
    t = rng.uniform(*GAP_S)
    while t < duration_s:
        if not deck:
            deck = list(kinds)
            rng.shuffle(deck)
        out.append((round(t, 1), deck.pop()))
        t += rng.uniform(*GAP_S)
    return out


@dataclass
class Stage:
    """What the injectors act on; the soak owns every piece."""

    bootstrap: str
    broker: LocalBroker | None
    train_topic: str
    eval_topic: str
    dead_letter_topic: str
    stall_timeout_s: float
    kill_trainer: Callable[[random.Random], str]  # SIGKILLs one worker; says which
    save_dead_letters: Callable[[], int]  # reads the dead-letter topic into the soak's record
    on_main: Callable[[Callable[[], object]], object]  # runs a call on the soak's main thread, waits for it
    # Offsets the soak wrote as poison or bomb: (partition, offset) -> kind. Written by delivery
    # callbacks, read at the end.
    bad: dict[tuple[int, int], str] = field(default_factory=dict)
    transactional_offsets: int = 0

    def admin(self) -> Any:
        from confluent_kafka.admin import AdminClient

        return AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})

    def partitions(self, topic: str) -> int:
        admin = self.admin()
        md = admin.list_topics(topic=topic, timeout=TIMEOUT_S)
        return len(md.topics[topic].partitions)


def _produce_bad(stage: Stage, values: list[tuple[str, bytes]], rng: random.Random) -> dict[str, Any]:
    """Send ``values`` to random partitions; record where each landed; raise if any failed."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": stage.bootstrap, "enable.idempotence": True, "log_level": 0})
    failed: list[str] = []
    count = stage.partitions(stage.train_topic)
    for kind, value in values:
        def delivered(err: Any, msg: Any, kind: str = kind) -> None:
            if err is not None:
                failed.append(f"{kind}: {err}")
            else:
                stage.bad[(msg.partition(), msg.offset())] = kind
        producer.produce(stage.train_topic, key=f"soak-{kind}".encode(), value=value,
                         partition=rng.randrange(count), on_delivery=delivered)
    left = producer.flush(TIMEOUT_S)
    if failed or left:
        msg = f"producing {len(values)} malformed messages: {left} undelivered, failures: {failed[:3]}"
        raise RuntimeError(msg)
    return {"messages": [k for k, _ in values]}


def _broker_kill(stage: Stage, rng: random.Random) -> dict[str, Any]:
    assert stage.broker is not None
    stage.broker.stop(kill=True)
    time.sleep(BROKER_DOWN_S)
    started = time.monotonic()
    # Not from this thread: the broker dies with the thread that started it (PR_SET_PDEATHSIG is
    # per thread), and this one ends as soon as the fault returns.
    stage.on_main(stage.broker.start)
    return {"down_s": BROKER_DOWN_S, "restart_s": round(time.monotonic() - started, 1)}


def _broker_pause(stage: Stage, rng: random.Random) -> dict[str, Any]:
    assert stage.broker is not None
    pause_s = stage.stall_timeout_s + 5.0  # longer than the reader watchdog's patience
    node = stage.broker.cluster.node(1)
    node.pause()
    try:
        time.sleep(pause_s)
    finally:
        node.resume()
    return {"paused_s": pause_s, "signals": [signal.SIGSTOP.name, signal.SIGCONT.name]}


def _transactional(stage: Stage, rng: random.Random) -> dict[str, Any]:
    """Good records in one committed transaction: its commit marker takes an offset no one reads."""
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": stage.bootstrap, "transactional.id": f"soak-{uuid.uuid4().hex[:8]}",
                        "log_level": 0})
    producer.init_transactions(TIMEOUT_S)
    producer.begin_transaction()
    count = stage.partitions(stage.train_topic)
    n = 10
    for i in range(n):
        value = messages.good_record(rng.randrange(1 << 20))
        producer.produce(stage.train_topic, key=f"soak-txn-{i}".encode(), value=value, partition=i % count)
    producer.commit_transaction(TIMEOUT_S)
    stage.transactional_offsets += n
    return {"messages": n, "partitions": min(n, count)}


def _partitions_added(stage: Stage, rng: random.Random) -> dict[str, Any]:
    from confluent_kafka.admin import NewPartitions  # type: ignore[attr-defined]

    count = stage.partitions(stage.train_topic)
    if count >= MAX_PARTITIONS:
        return {"partitions": count, "skipped": f"already {MAX_PARTITIONS}"}
    admin = stage.admin()  # held until the future resolves: a dropped client cancels its requests
    admin.create_partitions([NewPartitions(stage.train_topic, count + 1)])[stage.train_topic].result(TIMEOUT_S)
    return {"partitions": count + 1}


def _wait_gone(stage: Stage, topic: str) -> None:
    admin = stage.admin()
    deadline = time.monotonic() + TIMEOUT_S
    while topic in admin.list_topics(timeout=TIMEOUT_S).topics:
        if time.monotonic() > deadline:
            msg = f"topic {topic} still listed {TIMEOUT_S:.0f} s after its deletion"
            raise RuntimeError(msg)
        time.sleep(0.5)


def _recreate(stage: Stage, topic: str) -> None:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

    admin = stage.admin()
    try:  # a trainer that restarted meanwhile may have created it already
        admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(TIMEOUT_S)
    except KafkaException as exc:
        if "TOPIC_ALREADY_EXISTS" not in str(exc):
            raise


def _eval_emptied(stage: Stage, rng: random.Random) -> dict[str, Any]:
    admin = stage.admin()
    admin.delete_topics([stage.eval_topic])[stage.eval_topic].result(TIMEOUT_S)
    _wait_gone(stage, stage.eval_topic)
    _recreate(stage, stage.eval_topic)
    return {"topic": stage.eval_topic}


def _dead_letter_unwritable(stage: Stage, rng: random.Random) -> dict[str, Any]:
    """Delete the dead-letter topic, send poison while it is gone, recreate it after a while.

    What it held is saved first: deleting it would otherwise erase the evidence the verdict reads.
    """
    saved = stage.save_dead_letters()
    admin = stage.admin()
    admin.delete_topics([stage.dead_letter_topic])[stage.dead_letter_topic].result(TIMEOUT_S)
    _wait_gone(stage, stage.dead_letter_topic)
    sent = _produce_bad(stage, messages.poison(rng)[:2], rng)
    time.sleep(DEAD_LETTER_GONE_S)
    _recreate(stage, stage.dead_letter_topic)
    return {"saved_dead_letters": saved, "gone_s": DEAD_LETTER_GONE_S, **sent}


INJECTORS: dict[str, Callable[[Stage, random.Random], dict[str, Any]]] = {
    "broker_kill": _broker_kill,
    "broker_pause": _broker_pause,
    "poison_burst": lambda stage, rng: _produce_bad(stage, messages.poison(rng), rng),
    "bomb_burst": lambda stage, rng: _produce_bad(stage, messages.bombs(), rng),
    "transactional_producer": _transactional,
    "partitions_added": _partitions_added,
    "eval_topic_emptied": _eval_emptied,
    "dead_letter_unwritable": _dead_letter_unwritable,
    "trainer_kill": lambda stage, rng: {"killed": stage.kill_trainer(rng)},
}


def inject(kind: str, stage: Stage, rng: random.Random) -> dict[str, Any]:
    """Run one fault; the record says whether it happened (``ok``), how long it took and what it did."""
    started = time.monotonic()
    try:
        detail = INJECTORS[kind](stage, rng)
        ok, error = True, ""
    except Exception as exc:  # noqa: BLE001 - a fault that could not be injected is reported, not fatal
        detail, ok, error = {}, False, f"{type(exc).__name__}: {exc}"
        log.error("soak: fault %s could not be injected: %s", kind, error)
    return {"kind": kind, "ok": ok, "error": error, "took_s": round(time.monotonic() - started, 1), **detail}
