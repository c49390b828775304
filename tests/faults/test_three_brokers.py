"""Issue 13: three brokers, replication factor 3, ``min.insync.replicas=2``, and losing one of them.

The module's own 3-node cluster (``LocalCluster``: three KRaft broker+controller processes, a
3-voter quorum). Faults: SIGKILL of a partition's leader (no controlled shutdown: leadership moves
only when the controller fences the dead node, ``broker.session.timeout.ms`` = 9 s by default), and
a graceful stop (the leader hands its partitions over first).

- ``acks=all`` writes survive the leader's SIGKILL: every acknowledged message is read back;
- the trainer keeps training from a partition whose leader is killed, and skips nothing (in every
  `make test` with a short topic written beforehand; with a producer running throughout, the
  leader or the group's coordinator killed, in `make test-faults`).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import KafkaError
from confluent_kafka.admin import ConfigResource, ResourceType
from faultlib import (
    Rig,
    committed_offsets,
    latest_checkpoint,
    log_ends,
    make_rig,
    missing_offsets,
    read_partition,
    read_trained,
    trained_counts,
)

from stream_trainer.config import KafkaConfig
from stream_trainer.kafka import Cluster
from stream_trainer.workbench.broker import LocalCluster
from tests.pets import produce_pets

# The module's cluster starts only for the tests that run: every `make test` runs the short-topic
# leader kill (``faults`` alone); the rest run in `make test-faults`.
pytestmark = [pytest.mark.faults]


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    cluster = LocalCluster(tmp_path_factory.mktemp("three"), size=3, heap="384m")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture()
def whole(three: LocalCluster) -> LocalCluster:
    """The cluster with all three nodes up (a failed test may have left one down)."""
    for node_id, node in three.nodes.items():
        if not node.running:
            three.start_node(node_id)
    return three


def _cluster(bootstrap: str) -> Cluster:
    return Cluster(KafkaConfig(bootstrap_servers=bootstrap, connect_timeout_s=20), group_id=f"g-{uuid.uuid4().hex[:6]}")


@pytest.mark.slow
def test_topics_get_three_replicas_and_writes_need_two_in_sync(whole: LocalCluster) -> None:
    topic = f"rf-{uuid.uuid4().hex[:8]}"
    c = _cluster(whole.bootstrap)
    try:
        c.ensure_topics({topic: 2})  # replication factor -1: the cluster's default
        md = c.admin.list_topics(topic=topic, timeout=10)
        assert sorted(md.brokers) == [1, 2, 3]
        assert all(sorted(p.replicas) == [1, 2, 3] for p in md.topics[topic].partitions.values())
        (future,) = c.admin.describe_configs([ConfigResource(ResourceType.TOPIC, topic)]).values()
        config = future.result(10)
        assert config["min.insync.replicas"].value == "2"
        assert config["unclean.leader.election.enable"].value == "false"
    finally:
        c.close()


@pytest.mark.slow
def test_acks_all_writes_survive_a_sigkill_of_the_partition_leader(whole: LocalCluster) -> None:
    topic = f"acks-{uuid.uuid4().hex[:8]}"
    c = _cluster(whole.bootstrap)
    c.ensure_topics({topic: 1})
    acked: list[bytes] = []
    failed: list[str] = []
    stop = threading.Event()

    def on_delivery(err: KafkaError | None, msg) -> None:
        (failed.append(str(err)) if err is not None else acked.append(msg.value()))

    def produce() -> None:
        i = 0
        while not stop.is_set():
            c.producer.produce(topic, str(i).encode(), on_delivery=on_delivery)
            c.producer.poll(0)
            i += 1
            time.sleep(0.002)
        c.producer.flush(60)

    writer = threading.Thread(target=produce, name="producer")
    writer.start()
    try:
        whole.wait_for(lambda: len(acked) > 500, "500 acknowledged writes before the kill", 60)
        leader = whole.leader(topic)
        whole.kill(leader)
        killed_at, acked_at_kill = time.monotonic(), len(acked)
        whole.wait_for(lambda: whole.leader(topic) not in (-1, leader), "a new leader", 60)
        whole.wait_for(lambda: len(acked) > acked_at_kill + 500, "500 more acknowledged writes", 60)
        print(f"node {leader} killed; new leader {whole.leader(topic)}; writes resumed after "
              f"{time.monotonic() - killed_at:.1f} s")
        whole.start_node(leader)
        whole.wait_for(lambda: whole.in_sync(topic) == [1, 2, 3], "the restarted node back in sync", 60)
    finally:
        stop.set()
        writer.join(90)
        c.close()
    stored = [m.value() for m in read_partition(whole.bootstrap, topic, 60)]
    lost = set(acked) - set(stored)
    print(f"{len(acked)} acknowledged, {len(failed)} failed, {len(stored)} stored, {len(lost)} lost")
    assert not lost, f"{len(lost)} acknowledged writes are gone, e.g. {sorted(lost)[:5]}"
    assert len(stored) == len(set(stored)), "the idempotent producer wrote duplicates"


@pytest.mark.slow
def test_graceful_stop_hands_leadership_over_and_the_node_rejoins(whole: LocalCluster) -> None:
    topic = f"graceful-{uuid.uuid4().hex[:8]}"
    c = _cluster(whole.bootstrap)
    try:
        c.ensure_topics({topic: 1})
    finally:
        c.close()
    leader = whole.leader(topic)
    started = time.monotonic()
    whole.stop_node(leader)
    took = time.monotonic() - started
    assert whole.leader(topic) not in (-1, leader)  # handed over before the process exited
    print(f"graceful stop of node {leader} took {took:.1f} s; new leader {whole.leader(topic)}")
    whole.start_node(leader)
    whole.wait_for(lambda: whole.in_sync(topic) == [1, 2, 3], "the restarted node back in sync", 60)


@pytest.fixture()
def three_rig(tmp_path: Path, whole: LocalCluster) -> Iterator[Rig]:
    r = make_rig(tmp_path, whole.bootstrap, partitions=2, prefix="leader-kill")
    try:
        yield r
    finally:
        r.stop_all()


def _coordinator(bootstrap: str, group: str) -> int:
    """The node id of the broker coordinating ``group``."""
    c = Cluster(KafkaConfig(bootstrap_servers=bootstrap))
    try:
        return int(c.admin.describe_consumer_groups([group])[group].result(30).coordinator.id)
    finally:
        c.close()


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["leader", "coordinator"])
def test_training_goes_on_without_skipping_when_its_partition_leader_is_killed(
        three_rig: Rig, whole: LocalCluster, victim: str) -> None:
    """The leader of a partition being trained, or the coordinator of the trainer's group (which
    the trainer is a member of: one owner per checkpoint), is SIGKILLed."""
    rig = three_rig
    trained = rig.tmp / "trained.log"
    config = rig.write_config("settings.yaml", rig.settings(trainer__loop__trained_log=str(trained)))
    producer = rig.producer(config)
    trainer = rig.trainer(config)
    rig.wait_until(lambda: len(read_trained(trained)) >= 40, 240, "40 trained messages", alive=(trainer, producer))

    node = whole.leader(rig.topic, 0) if victim == "leader" else _coordinator(whole.bootstrap, rig.group)
    end_at_kill = log_ends(whole.bootstrap, rig.topic)[0]
    whole.kill(node)
    killed_at = time.monotonic()

    def partition_0_passed_its_end_at_kill() -> bool:
        trained_0 = {(p, o) for p, o, _ in read_trained(trained) if p == 0}
        return not missing_offsets(trained_0, {0: end_at_kill + 1})  # up to the first message after the kill

    # Partition 0 itself (the one whose leader died, or any one when the coordinator did) must
    # train on past what it held at the kill: partition 1 alone moving proves nothing.
    rig.wait_until(partition_0_passed_its_end_at_kill, 240,
                   f"partition 0 trained past its log end at the kill ({end_at_kill})", alive=(trainer, producer))
    print(f"killed node {node} ({victim}); partition 0 trained past offset {end_at_kill} "
          f"{time.monotonic() - killed_at:.1f} s later")
    whole.start_node(node)
    assert producer.stop() == 0, rig.logs()
    ends = log_ends(whole.bootstrap, rig.topic)

    def everything_trained() -> bool:
        return not missing_offsets(trained_counts(trained), ends)

    rig.wait_until(everything_trained, 240, f"every message up to the log ends {ends} trained", alive=(trainer,))
    c = Cluster(KafkaConfig(bootstrap_servers=whole.bootstrap), group_id=rig.group)
    try:
        # The killed node may have been the group's coordinator: the trainer's membership moves
        # with it, and its commits must catch up by themselves (it rejoins), not only at the next run.
        # Commits follow checkpoints (every 5 steps): while the trainer runs they reach the newest
        # checkpoint's positions, which hold the log ends only when the last step was a checkpoint's.
        def commits_caught_up() -> bool:
            saved = latest_checkpoint(rig.checkpoint_dir)
            return saved is not None and c.committed(rig.topic, [0, 1]) == saved.positions

        rig.wait_until(commits_caught_up, 120, "the group's commits to reach the newest checkpoint's positions",
                       alive=(trainer,))
        assert trainer.stop() == 0, rig.logs()
        committed = c.committed(rig.topic, [0, 1])
    finally:
        c.close()
    final = latest_checkpoint(rig.checkpoint_dir)
    assert final is not None and final.positions == ends == committed, (final, ends, committed)
    for p, end in ends.items():
        assert {o for q, o, _ in read_trained(trained) if q == p} == set(range(end)), f"partition {p}"


def test_a_short_topic_trains_to_its_log_ends_through_a_kill_of_partition_0s_leader(
        three_rig: Rig, whole: LocalCluster) -> None:
    """Partition 0 is trained to its end, its leader is SIGKILLed, more messages come to partition 0
    through the new leader: the trainer trains them too, and its final positions are the log ends."""
    rig = three_rig
    trained = rig.tmp / "trained.log"
    produce_pets(whole.bootstrap, rig.topic, 16, seed=0, size=40, partition=0)
    produce_pets(whole.bootstrap, rig.topic, 8, seed=1, size=40, partition=1)
    config = rig.write_config("settings.yaml", rig.settings(trainer__loop__trained_log=str(trained)))
    trainer = rig.trainer(config)
    rig.wait_until(lambda: not missing_offsets(trained_counts(trained), {0: 16, 1: 8}), 180,
                   "the first 16 + 8 messages trained", alive=(trainer,))
    leader = whole.leader(rig.topic, 0)
    end_at_kill = log_ends(whole.bootstrap, rig.topic)[0]
    assert end_at_kill == 16
    whole.kill(leader)
    killed_at = time.monotonic()
    produce_pets(whole.bootstrap, rig.topic, 12, seed=2, size=40, partition=0)  # acks=all, to the new leader
    ends = log_ends(whole.bootstrap, rig.topic)
    assert ends == {0: 28, 1: 8}, ends
    # Partition 0 itself, whose reader's broker died, trains past its end at the kill.
    rig.wait_until(lambda: not missing_offsets(trained_counts(trained), ends), 120,
                   f"partition 0 trained past {end_at_kill} to {ends[0]} after its leader was killed", alive=(trainer,))
    print(f"killed node {leader}; partition 0 trained to {ends[0]} {time.monotonic() - killed_at:.1f} s later")
    assert trainer.stop() == 0, rig.logs()
    final = latest_checkpoint(rig.checkpoint_dir)
    committed = committed_offsets(whole.bootstrap, rig.group, rig.topic, 2)
    assert final is not None and final.positions == ends == committed, (final, ends, committed)
    for p, end in ends.items():
        assert {o for q, o, _ in read_trained(trained) if q == p} == set(range(end)), f"partition {p}"
