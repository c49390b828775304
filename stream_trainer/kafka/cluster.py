"""Everything that talks to Kafka through confluent-kafka: metadata, topics, offsets, commits,
watermarks (lag), the dead-letter producer and re-reading single messages.

The training data itself is read by tensorflow-io (``ingest/reader.py``); this module is the modern
librdkafka side that does the bookkeeping tfio's bundled librdkafka 1.5.0 cannot.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ClusterMetadata  # type: ignore[attr-defined]
from confluent_kafka.cimpl import NewTopic

from stream_trainer.config import KafkaConfig
from stream_trainer.errors import AuthorizationError, BrokerUnavailableError, ConfigError, StreamTrainerError, one_line

log = logging.getLogger(__name__)
T = TypeVar("T")


class _ReconnectChatter(logging.Filter):
    """Drops librdkafka's reconnect chatter, many lines a second while a broker is away (our own
    errors say once what is wrong), and passes everything else: authentication, TLS and
    configuration problems are never hidden, but each is shown once per ``REPEAT_S``, not at every
    reconnect (a revoked certificate would otherwise log the same handshake failure for ever)."""

    _CHATTER = ("Connection refused", "Connect to ", "Disconnected", "brokers are down", "transport failure",
                "Receive failed", "Send failed", "Timed out", "timed out")
    _NEVER_HIDDEN = ("SASL", "SSL", "uthenticat", "certificate", "handshake", "onfiguration")
    REPEAT_S = 300.0
    _REMEMBERED = 64  # distinct problems remembered at once; the oldest is forgotten first
    # What differs between two reports of one problem: the client's name, the timing suffix.
    _VARYING = re.compile(r"\[rdkafka#\w+-\d+\]|\s*\(after \d+ms.*$|\s*\(\d+ identical error\(s\) suppressed\)")

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._shown: OrderedDict[str, float] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if not any(k in text for k in self._NEVER_HIDDEN):
            return not any(n in text for n in self._CHATTER)
        key, now = self._VARYING.sub("", text), time.monotonic()
        with self._lock:
            shown = self._shown.get(key)
            if shown is not None and now - shown < self.REPEAT_S:
                return False
            self._shown[key] = now
            self._shown.move_to_end(key)
            while len(self._shown) > self._REMEMBERED:
                self._shown.popitem(last=False)
        return True


# The logger every confluent-kafka client of ours hands librdkafka's log lines to.
RDKAFKA_LOG = logging.getLogger("librdkafka")
RDKAFKA_LOG.addFilter(_ReconnectChatter())

# Group-coordinator answers that mean "not yet": a fresh broker is still loading __consumer_offsets.
# Likewise a just-created partition whose leader is still being elected.
_RETRIABLE = {KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
              KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.NOT_LEADER_FOR_PARTITION,
              KafkaError.LEADER_NOT_AVAILABLE, KafkaError.UNKNOWN_TOPIC_OR_PART,
              KafkaError._TIMED_OUT, KafkaError._TRANSPORT}
# create_topics answers that say nothing of the topic: the request lost its answer (a broker
# handle dropped while a broker of the cluster restarts, a connection lost, a timeout) or reached
# a broker that is no longer the controller. The creation is asked again until the timeout.
_CREATE_AGAIN = {KafkaError._DESTROY_BROKER, KafkaError._TRANSPORT, KafkaError._TIMED_OUT,
                 KafkaError.REQUEST_TIMED_OUT, KafkaError.NOT_CONTROLLER}
# What a group member hears after its group moved to another coordinator (the broker holding it
# died) until it has rejoined; the rejoin completes in poll(), where the assignment callback runs.
_REJOINING = {KafkaError.UNKNOWN_MEMBER_ID, KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS}



def _reason(exc: KafkaException) -> str:
    err = exc.args[0] if exc.args else None
    return one_line(err.str() if isinstance(err, KafkaError) else exc)


def _creation_error(topic: str, replication_factor: int, exc: KafkaException, kafka: KafkaConfig) -> StreamTrainerError:
    """One line for a topic creation the cluster refused, naming the setting to change."""
    err = exc.args[0]
    code, reason = err.code(), one_line(err.str()).rstrip(".")
    where = kafka.bootstrap_servers
    if code == KafkaError.INVALID_REPLICATION_FACTOR:
        asked = "the cluster's default.replication.factor" if replication_factor == -1 else str(replication_factor)
        return ConfigError(f"config key 'topics.replication_factor': creating topic '{topic}' with {asked} replicas "
                           f"was refused by {where}: {reason}; use at most as many replicas as the cluster has "
                           f"brokers, or -1 for its default")
    if code == KafkaError.INVALID_PARTITIONS:
        return ConfigError(f"config key 'topics.partitions': creating topic '{topic}' was refused by {where}: {reason}")
    if code in (KafkaError.POLICY_VIOLATION, KafkaError.INVALID_CONFIG, KafkaError.TOPIC_EXCEPTION):
        return ConfigError(f"creating topic '{topic}' was refused by {where} ({err.name()}): {reason}; create it by "
                           f"hand as the cluster's policy requires, or change topics.*")
    if code in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.CLUSTER_AUTHORIZATION_FAILED):
        user = kafka.client.get("sasl.username", "this client")
        return AuthorizationError(f"'{user}' may not create topic '{topic}' on {where} ({reason}); "
                                  f"grant it CREATE on the topic or create the topic beforehand (docs/operations.md)")
    return BrokerUnavailableError(f"creating topic '{topic}' on {where} failed ({err.name()}): {reason}")


def client_config(kafka: KafkaConfig, **extra: Any) -> dict[str, Any]:
    """librdkafka settings for one client: bootstrap, the user's pass-through keys, then ``extra``."""
    conf: dict[str, Any] = {"bootstrap.servers": kafka.bootstrap_servers, "logger": RDKAFKA_LOG}
    conf.update(kafka.client)
    conf.update(extra)
    return conf


def _retry(what: str, call: Callable[[], T], timeout_s: float, retriable: frozenset[int] | set[int] = _RETRIABLE,
           pause: Callable[[], object] = lambda: time.sleep(0.25)) -> T:
    """Run ``call`` until it stops failing with a retriable coordinator error or time runs out;
    ``pause`` runs between tries."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return call()
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            code = err.code() if isinstance(err, KafkaError) else None
            if code not in retriable or time.monotonic() >= deadline:
                msg = f"{what} failed: {one_line(err)}"
                raise BrokerUnavailableError(msg) from exc
            pause()


DELIVERY_TIMEOUT_S = 10.0


def offset_of(msg: Message) -> int:
    """A consumed message's offset (confluent-kafka types it optional: only produced ones lack it)."""
    offset = msg.offset()
    assert offset is not None
    return offset


def _create(kind: Any, conf: dict[str, Any]) -> Any:
    """A client, or a ConfigError naming kafka.client when librdkafka refuses the combination."""
    try:
        return kind(conf)
    except KafkaException as exc:
        msg = f"config key 'kafka.client': librdkafka refuses the settings ({_reason(exc)})"
        raise ConfigError(msg) from exc


@dataclass(frozen=True)
class Watermarks:
    low: int
    high: int


class _Scan:
    """The one consumer loop behind every re-read: one partition's messages in offset order."""

    def __init__(self, reader: Consumer, topic: str, partition: int) -> None:
        self.reader = reader
        self.topic = topic
        self.partition = partition
        self.timed_out = False

    def messages(self, timeout_s: float) -> Iterator[Message]:
        """Each message from the position on, until the log end; ``timed_out`` tells when time ran out first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            msg = self.reader.poll(0.5)
            if msg is None:
                continue
            if (err := msg.error()) is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    return  # the rest is beyond the log end
                continue
            yield msg
        self.timed_out = True

    def seek(self, offset: int) -> None:
        self.reader.seek(TopicPartition(self.topic, self.partition, offset))


class Cluster:
    """One connection's worth of admin/consumer/producer clients for a cluster.

    Every public method either answers within its timeout or raises an error a person can act
    on; none of them retries forever.
    """

    def __init__(self, kafka: KafkaConfig, group_id: str = "stream-trainer") -> None:
        self.kafka = kafka
        self.group_id = group_id
        # librdkafka reports every failed reconnect: keep the latest few, not an outage's worth.
        self._errors: deque[str] = deque(maxlen=20)
        self.admin = AdminClient(client_config(kafka, error_cb=self._on_error))
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None

    def _on_error(self, err: KafkaError) -> None:
        self._errors.append(str(err))

    @property
    def consumer(self) -> Consumer:
        """A group member that never subscribes: it commits, reads committed offsets and watermarks."""
        if self._consumer is None:
            self._consumer = _create(Consumer, client_config(
                self.kafka, **{"group.id": self.group_id, "enable.auto.commit": False,
                               "enable.partition.eof": False, "auto.offset.reset": "earliest",
                               # As a group member (join_group): a dead trainer leaves within this.
                               "session.timeout.ms": 10000, "heartbeat.interval.ms": 3000},
            ))
        return self._consumer

    @property
    def producer(self) -> Producer:
        """The dead-letter producer: a message it cannot deliver fails after DELIVERY_TIMEOUT_S,
        so its sender knows which ones to send again (nothing is retried twice by both)."""
        if self._producer is None:
            self._producer = _create(Producer, client_config(
                self.kafka, **{"enable.idempotence": True, "acks": "all", "linger.ms": 5,
                               "message.timeout.ms": int(DELIVERY_TIMEOUT_S * 1000)},
            ))
        return self._producer

    def wait_until_reachable(self, timeout_s: float | None = None) -> None:
        """Raise BrokerUnavailableError if no broker answers a metadata request in time."""
        timeout = self.kafka.connect_timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout
        last = ""
        while True:
            try:
                md = self.admin.list_topics(timeout=max(0.5, min(2.0, deadline - time.monotonic())))
                if md.brokers:
                    return
            except KafkaException as exc:
                last = one_line(exc.args[0] if exc.args else exc)
            if time.monotonic() >= deadline:
                detail = last or (one_line(self._errors[-1]) if self._errors else "no answer")
                msg = (f"Kafka broker unreachable at {self.kafka.bootstrap_servers} after {timeout:.0f} s "
                       f"({detail}); check kafka.bootstrap_servers or KAFKA_BOOTSTRAP")
                raise BrokerUnavailableError(msg)
            time.sleep(0.2)

    def partitions(self, topic: str, timeout_s: float = 10.0) -> list[int]:
        """The topic's partition ids; ConfigError if it does not exist."""
        md = self.admin.list_topics(topic=topic, timeout=timeout_s)
        tmd = md.topics.get(topic)
        if tmd is None or (tmd.error is not None and tmd.error.code() == KafkaError.UNKNOWN_TOPIC_OR_PART):
            msg = (f"topic '{topic}' does not exist on {self.kafka.bootstrap_servers}; create it "
                   f"(pet-producer does, with topics.partitions) or fix the topics.* config keys")
            raise ConfigError(msg)
        if tmd.error is not None:
            msg = f"metadata for topic '{topic}' failed: {one_line(tmd.error)}"
            raise BrokerUnavailableError(msg)
        return sorted(tmd.partitions)

    def ensure_topics(self, topics: Mapping[str, int], replication_factor: int = -1, timeout_s: float = 30.0) -> None:
        """Create the topics that do not exist yet (name -> partition count); leave others alone.

        ``replication_factor=-1`` lets the cluster choose (its ``default.replication.factor``,
        Kafka >= 2.4), so topics get 3 replicas on a production cluster and 1 on a dev broker.
        A creation the cluster refuses raises ConfigError (replication factor, partitions, policy)
        or AuthorizationError (ACLs) in one line; no answer raises BrokerUnavailableError.
        """
        try:
            existing = set(self.admin.list_topics(timeout=timeout_s).topics)
        except KafkaException as exc:
            msg = f"listing topics on {self.kafka.bootstrap_servers} failed: {_reason(exc)}"
            raise BrokerUnavailableError(msg) from exc
        new = [NewTopic(name, num_partitions=n, replication_factor=replication_factor)
               for name, n in topics.items() if name not in existing]
        if not new:
            return
        deadline = time.monotonic() + timeout_s

        def create(topic: NewTopic) -> None:
            try:
                self.admin.create_topics([topic], request_timeout=timeout_s)[topic.topic].result()
                log.info("created topic %s", topic.topic)
            except KafkaException as exc:
                code = exc.args[0].code()
                if code in _CREATE_AGAIN:
                    raise  # _retry asks again
                if code != KafkaError.TOPIC_ALREADY_EXISTS:  # on a second ask, the first one's work
                    raise _creation_error(topic.topic, replication_factor, exc, self.kafka) from exc

        for topic in new:
            _retry(f"creating topic '{topic.topic}' on {self.kafka.bootstrap_servers}", partial(create, topic),
                   max(0.0, deadline - time.monotonic()), _CREATE_AGAIN)
        self._wait_for_leaders([t.topic for t in new], timeout_s)

    def _wait_for_leaders(self, topics: list[str], timeout_s: float) -> None:
        # A topic is not readable by librdkafka 1.5 until every partition has a leader, and on a
        # cluster of several brokers each learns of a new topic at its own moment: a client asking
        # one that has not yet would be told the topic does not exist. So ask every broker.
        deadline = time.monotonic() + timeout_s
        md = self._await_leaders(self.admin, topics, deadline, timeout_s, self.kafka.bootstrap_servers)
        if len(md.brokers) > 1:
            for broker in md.brokers.values():
                address = f"{broker.host}:{broker.port}"
                one = AdminClient(client_config(self.kafka, **{"bootstrap.servers": address}))
                self._await_leaders(one, topics, deadline, timeout_s, address)

    @staticmethod
    def _await_leaders(admin: AdminClient, topics: list[str], deadline: float, timeout_s: float,
                       where: str) -> ClusterMetadata:
        while True:
            try:
                md = admin.list_topics(timeout=max(0.5, min(5.0, deadline - time.monotonic())))
                leaderless = [t for t in topics if not (t in md.topics and md.topics[t].partitions and all(
                    p.leader >= 0 for p in md.topics[t].partitions.values()))]
            except KafkaException as exc:
                leaderless, last = topics, _reason(exc)
            else:
                last = "a partition has no leader yet"
            if not leaderless:
                return md
            if time.monotonic() >= deadline:
                msg = (f"created topic(s) {', '.join(leaderless)}, but {where} did not report a leader for every "
                       f"partition after {timeout_s:.0f} s ({last})")
                raise BrokerUnavailableError(msg)
            time.sleep(0.1)

    def watermarks(self, topic: str, partitions: Iterable[int], timeout_s: float = 5.0) -> dict[int, Watermarks]:
        out = {}
        for p in partitions:
            tp = TopicPartition(topic, p)

            def read(tp: TopicPartition = tp) -> tuple[int, int]:
                marks = self.consumer.get_watermark_offsets(tp, timeout=timeout_s)
                assert marks is not None  # None only with cached=True
                return marks

            low, high = _retry(f"reading watermarks of {topic}[{p}]", read, timeout_s)
            out[p] = Watermarks(low, high)
        return out

    def offset_for_time(self, topic: str, partition: int, timestamp_ms: int, timeout_s: float = 5.0) -> int:
        """The first offset of ``topic[partition]`` whose timestamp is at or after ``timestamp_ms``
        (the log end when none is)."""

        def read() -> int:
            (found,) = self.consumer.offsets_for_times([TopicPartition(topic, partition, timestamp_ms)],
                                                       timeout=timeout_s)
            return int(found.offset)

        offset = _retry(f"looking up {topic}[{partition}] at time {timestamp_ms}", read, timeout_s)
        return offset if offset >= 0 else self.watermarks(topic, [partition], timeout_s)[partition].high

    def committed(self, topic: str, partitions: Iterable[int], timeout_s: float = 30.0) -> dict[int, int]:
        """The group's committed next-offset per partition; partitions without one are left out."""
        tps = _retry(f"reading committed offsets of group '{self.group_id}'",
                     lambda: self.consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=5.0),
                     timeout_s)
        return {tp.partition: tp.offset for tp in tps if tp.offset >= 0}

    def commit(self, topic: str, offsets: Mapping[int, int]) -> None:
        """Synchronously commit next-offsets for the group, so lag tools see real progress."""
        if offsets:
            tps = [TopicPartition(topic, p, o) for p, o in offsets.items()]
            _retry(f"committing offsets for group '{self.group_id}'",
                   lambda: self.consumer.commit(offsets=tps, asynchronous=False), self.kafka.connect_timeout_s,
                   _RETRIABLE | _REJOINING, lambda: self.consumer.poll(0.25))

    def join_group(self, topic: str, timeout_s: float = 30.0) -> list[str]:
        """Become a member of the consumer group (subscribed to ``topic``, every partition paused:
        nothing is fetched through the group); return the *other* members, [] when alone.

        Alone means the first assignment is the whole topic: a second member would have taken
        some partitions (see ``ownership.py``).
        """
        assigned = threading.Event()
        got: list[TopicPartition] = []

        def on_assign(consumer: Consumer, partitions: list[TopicPartition]) -> None:
            consumer.assign(partitions)
            consumer.pause(partitions)
            got[:] = partitions
            assigned.set()

        self.consumer.subscribe([topic], on_assign=on_assign)
        deadline = time.monotonic() + timeout_s
        while not assigned.is_set() and time.monotonic() < deadline:
            self.consumer.poll(0.2)
        total = len(self.partitions(topic))
        if assigned.is_set() and len(got) == total:
            return []
        return self._other_members() or ["a member that did not say who it is"]

    def _other_members(self) -> list[str]:
        try:
            desc = self.admin.describe_consumer_groups([self.group_id])[self.group_id].result(10)
        except KafkaException:
            return []
        me = self.consumer.memberid()
        return [f"{m.client_id} at {m.host}" for m in desc.members if m.member_id != me]

    def keepalive(self) -> None:
        """Serve group callbacks (a rebalance re-pauses the partitions); cheap, never blocks."""
        if self._consumer is not None:
            self._consumer.poll(0)

    def leave_group(self) -> None:
        if self._consumer is not None:
            self._consumer.unsubscribe()

    def read_range(self, topic: str, partition: int, start: int, end: int, timeout_s: float = 10.0) -> list[Message]:
        """Messages with start <= offset < end (those that still exist), for re-reading skipped ones."""
        if end <= start:
            return []
        out: list[Message] = []
        with self._reread(topic, partition, start if start >= 0 else OFFSET_BEGINNING) as scan:
            for msg in scan.messages(timeout_s):
                if offset_of(msg) >= end:
                    return out
                if offset_of(msg) >= start:
                    out.append(msg)
        if scan.timed_out:
            msg_ = f"re-reading {topic}[{partition}] offsets {start}..{end - 1} timed out"
            raise BrokerUnavailableError(msg_)
        return out

    def read_offsets(self, topic: str, partition: int, offsets: Iterable[int], timeout_s: float = 30.0,
                     max_gap: int = 200) -> dict[int, Message]:
        """The messages at ``offsets`` of one partition that still exist, with one consumer.

        Wanted offsets close together are read in one sequential pass; a gap of more than
        ``max_gap`` messages is skipped with a seek (sparse members of a replay store). What
        time runs out on is left out, like what no longer exists.
        """
        wanted = sorted(set(offsets))
        if not wanted:
            return {}
        # Offsets at or past the log end cannot come: leave them out now rather than wait for them.
        high = self.watermarks(topic, [partition], timeout_s=timeout_s)[partition].high
        wanted = [o for o in wanted if o < high]
        if not wanted:
            return {}
        found: dict[int, Message] = {}
        i = 0
        with self._reread(topic, partition, wanted[0]) as scan:
            for msg in scan.messages(timeout_s):
                offset = offset_of(msg)
                while i < len(wanted) and wanted[i] < offset:
                    i += 1  # deleted by retention (or compacted away)
                if i < len(wanted) and wanted[i] == offset:
                    found[offset] = msg
                    i += 1
                if i == len(wanted):
                    break
                if wanted[i] - offset > max_gap:
                    scan.seek(wanted[i])
        return found

    @contextmanager
    def _reread(self, topic: str, partition: int, start: int) -> Iterator[_Scan]:
        """A throwaway consumer positioned at ``start`` of one partition, closed on leaving."""
        reader = Consumer(client_config(
            self.kafka, **{"group.id": f"{self.group_id}-reread", "enable.auto.commit": False,
                           "auto.offset.reset": "earliest", "enable.partition.eof": True},
        ))
        try:
            reader.assign([TopicPartition(topic, partition, start)])
            yield _Scan(reader, topic, partition)
        finally:
            reader.close()

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(10)
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
