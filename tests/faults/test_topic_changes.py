"""Issue 13: the topic changes under a running trainer, and two copies of a trainer meet.

* partitions added while running are trained from ``auto_offset_reset``, old ones lose nothing;
* retention deletes messages the trainer had not read yet: the reader's fetch fails for real
  ("Offset out of range"; tensorflow-io 0.37.1 logs it and waits instead of raising), the
  watchdog replaces the stalled reader at the new log start, the loss is counted per partition
  and nothing is sent to the dead-letter topic;
* the dead-letter topic cannot be written: training goes on, failures and backlog are metrics,
  positions wait behind the undelivered dead letters and move once the topic is back;
* a rolling update: a second trainer with the same checkpoint directory and group waits while
  the first runs and takes over from its last checkpoint: 0 skipped, nothing trained twice.
"""

from __future__ import annotations

import time
from collections import Counter

import pytest
from confluent_kafka import Producer, TopicPartition
from faultlib import (
    Rig,
    committed_offsets,
    free_port,
    latest_checkpoint,
    log_ends,
    metric,
    missing_offsets,
    read_dead_letters,
    read_trained,
    scrape,
)

from stream_trainer.config import KafkaConfig
from stream_trainer.kafka import Cluster
from tests.pets import produce_pets
from tests.readers import READERS_SLOW_OTHER
from tests.test_trainer import poison_messages


def _cluster(rig: Rig) -> Cluster:
    return Cluster(KafkaConfig(bootstrap_servers=rig.bootstrap))


@pytest.mark.faults
@pytest.mark.parametrize("reader", READERS_SLOW_OTHER)
def test_partitions_added_while_running_are_trained_without_a_restart(rig: Rig) -> None:
    port = free_port()
    log = rig.tmp / "trained.log"
    config = rig.write_config("t.yaml", rig.settings(trainer__loop__trained_log=str(log), trainer__metrics__port=port,
                                                     trainer__source__metadata_refresh_s=2))
    for p in (0, 1):
        produce_pets(rig.bootstrap, rig.topic, 20, seed=p, size=40, partition=p)
    trainer = rig.trainer(config)
    rig.wait_until(lambda: len(read_trained(log)) >= 40, 180, "the first 40 messages trained", alive=(trainer,))
    cluster = _cluster(rig)
    try:
        from confluent_kafka.admin import NewPartitions

        cluster.admin.create_partitions([NewPartitions(rig.topic, 4)])[rig.topic].result(30)
    finally:
        cluster.close()
    added_at = time.monotonic()
    for p in (0, 1, 2, 3):
        produce_pets(rig.bootstrap, rig.topic, 12, seed=10 + p, size=40, partition=p)
    ends = log_ends(rig.bootstrap, rig.topic)
    assert sorted(ends) == [0, 1, 2, 3]
    rig.wait_until(lambda: not missing_offsets(Counter((p, o) for p, o, _ in read_trained(log)), ends), 120,
                   f"every offset of all four partitions below {ends}", alive=(trainer,))
    print(f"added partitions trained {time.monotonic() - added_at:.1f} s after they were added")
    assert trainer.stop() == 0, rig.logs()
    final = latest_checkpoint(rig.checkpoint_dir)
    assert final is not None and final.positions == ends
    assert sum(n - 1 for n in Counter((p, o) for p, o, _ in read_trained(log)).values()) == 0


@pytest.mark.faults
@pytest.mark.parametrize("reader", READERS_SLOW_OTHER)
def test_retention_deleting_unread_messages_is_counted_and_training_continues_after_them(rig: Rig) -> None:
    port = free_port()
    log = rig.tmp / "trained.log"
    # A tiny read-ahead (inbox, decode groups, librdkafka's prefetch) so the readers are far
    # behind the log end when the records are deleted.
    config = rig.write_config("t.yaml", rig.settings(
        trainer__loop__trained_log=str(log), trainer__metrics__port=port, trainer__source__queue_capacity=4,
        trainer__source__stall_timeout_s=10,
        trainer__pipeline__decode_group=4, kafka__client={"queued.min.messages": "5",
                                                           "queued.max.messages.kbytes": "64",
                                                           "max.partition.fetch.bytes": "16384"}))
    for p in (0, 1):
        produce_pets(rig.bootstrap, rig.topic, 300, seed=p, size=40, partition=p)
    trainer = rig.trainer(config)
    rig.wait_until(lambda: len(read_trained(log)) >= 20, 180, "some training", alive=(trainer,))
    deleted_to = 200
    cluster = _cluster(rig)
    try:
        futures = cluster.admin.delete_records([TopicPartition(rig.topic, p, deleted_to) for p in (0, 1)])
        for f in futures.values():
            f.result(30)
    finally:
        cluster.close()
    ends = log_ends(rig.bootstrap, rig.topic)
    rig.wait_until(lambda: not missing_offsets(Counter((p, o) for p, o, _ in read_trained(log)), ends,
                                               dict.fromkeys((0, 1), deleted_to)),
                   180, "every remaining offset trained", alive=(trainer,))
    text = scrape(port)
    trained = Counter((p, o) for p, o, _ in read_trained(log))
    total_lost = 0.0
    for p in (0, 1):
        read_before = max(o for q, o in trained if q == p and o < deleted_to) + 1
        lost = metric(text, "stream_trainer_messages_lost_total", partition=str(p), reason="retention")
        # Exactly the messages between what the reader had read (librdkafka may have prefetched
        # a whole partition before the deletion) and the new log start.
        assert lost == deleted_to - read_before, (p, lost, read_before)
        assert all(o < read_before or o >= deleted_to for q, o in trained if q == p)
        total_lost += lost
    assert total_lost > 0, "the deletion overtook nothing: the scenario did not test a reader failing"
    assert metric(text, "stream_trainer_source_restarts_total") >= 1
    assert trainer.stop() == 0, rig.logs()
    assert read_dead_letters(rig.bootstrap, rig.dead_letter_topic, timeout_s=3) == [], "deleted != malformed"
    final = latest_checkpoint(rig.checkpoint_dir)
    assert final is not None and final.positions == ends


@pytest.mark.faults
@pytest.mark.slow
def test_an_unwritable_dead_letter_topic_holds_positions_and_training_goes_on(rig: Rig) -> None:
    port = free_port()
    log = rig.tmp / "trained.log"
    config = rig.write_config("t.yaml", rig.settings(trainer__loop__trained_log=str(log), trainer__metrics__port=port))
    cluster = _cluster(rig)
    produce_pets(rig.bootstrap, rig.topic, 10, seed=1, size=40, partition=0)
    produce_pets(rig.bootstrap, rig.topic, 30, seed=3, size=40, partition=1)
    trainer = rig.trainer(config)
    rig.wait_until(lambda: {(0, 9), (1, 29)} <= {(q, o) for q, o, _ in read_trained(log)}, 180,
                   "everything produced so far trained", alive=(trainer,))
    # The trainer created the dead-letter topic at start; it goes away while the trainer runs, and
    # only then does a malformed message come (earlier, it could be dead-lettered before the deletion).
    cluster.admin.delete_topics([rig.dead_letter_topic])[rig.dead_letter_topic].result(30)
    p = Producer({"bootstrap.servers": rig.bootstrap})
    p.produce(rig.topic, key=b"poison", value=poison_messages()["parse"], partition=0)  # offset 10
    assert p.flush(10) == 0
    produce_pets(rig.bootstrap, rig.topic, 30, seed=2, size=40, partition=0)
    rig.wait_until(lambda: metric(scrape(port), "stream_trainer_dead_letter_failures_total") >= 2, 120,
                   "dead-letter failures counted", alive=(trainer,))
    text = scrape(port)
    assert metric(text, "stream_trainer_dead_letter_backlog") >= 1
    trained = {(q, o) for q, o, _ in read_trained(log)}
    assert (0, 11) in trained and (1, 29) in trained, "training went on"
    ckpt = latest_checkpoint(rig.checkpoint_dir)
    assert ckpt is not None and ckpt.positions[0] <= 10, f"position moved past the undelivered poison: {ckpt}"
    assert committed_offsets(rig.bootstrap, rig.group, rig.topic, 2).get(0, 0) <= 10
    cluster.ensure_topics({rig.dead_letter_topic: 1})
    cluster.close()
    rig.wait_until(lambda: read_dead_letters(rig.bootstrap, rig.dead_letter_topic, timeout_s=3), 120,
                   "the poison dead-lettered once the topic is back", alive=(trainer,))
    assert trainer.stop() == 0, rig.logs()
    (dead,) = read_dead_letters(rig.bootstrap, rig.dead_letter_topic)
    assert (dead.partition, dead.offset, dead.reason) == (0, 10, "parse")
    final = latest_checkpoint(rig.checkpoint_dir)
    assert final is not None and final.positions[0] > 10


@pytest.mark.faults
def test_a_rolling_update_waits_for_the_old_trainer_and_takes_over_from_its_checkpoint(rig: Rig) -> None:
    producer = rig.producer(rig.write_config("producer.yaml", rig.settings()))
    log_a, log_b = rig.tmp / "trained-a.log", rig.tmp / "trained-b.log"
    a = rig.trainer(rig.write_config("a.yaml", rig.settings(trainer__loop__trained_log=str(log_a))), "trainer-a")
    rig.wait_until(lambda: len(read_trained(log_a)) >= 30, 180, "the old trainer training", alive=(a, producer))
    b = rig.trainer(rig.write_config("b.yaml", rig.settings(trainer__loop__trained_log=str(log_b))), "trainer-b")
    rig.wait_until(lambda: "is in use by another trainer" in "".join(b.output), 120, "the new trainer waiting",
                   alive=(a, b, producer))
    # While B waits, A goes on: 100 more trained messages (~10 s) give B time to load TensorFlow and
    # train if it could.
    waiting_at = len(read_trained(log_a))
    rig.wait_until(lambda: len(read_trained(log_a)) >= waiting_at + 100, 120, "the old trainer training on",
                   alive=(a, b, producer))
    assert read_trained(log_b) == [], "the new trainer trained while the old one ran"
    assert a.stop() == 0, rig.logs()
    handed_over = latest_checkpoint(rig.checkpoint_dir)
    assert handed_over is not None
    rig.wait_until(lambda: len(read_trained(log_b)) >= 20, 180, "the new trainer taking over", alive=(b, producer))
    ends = log_ends(rig.bootstrap, rig.topic)
    rig.wait_until(lambda: not missing_offsets(Counter((p, o) for p, o, _ in read_trained(log_b)), ends,
                                               handed_over.positions),
                   180, "the new trainer to catch up", alive=(b, producer))
    assert b.stop() == 0, rig.logs()
    producer.stop()
    run_a = Counter((p, o) for p, o, _ in read_trained(log_a))
    run_b = Counter((p, o) for p, o, _ in read_trained(log_b))
    assert not missing_offsets(run_a + run_b, ends), "skipped offsets"
    assert not set(run_a) & set(run_b), "a clean hand-over trains nothing twice"
    assert min(s for _, _, s in read_trained(log_b)) == handed_over.step + 1
