"""Issue 14: the replay store across a hard kill, and replay against forgetting on a drifting stream.

* SIGKILL, then restart: the store comes back with the checkpoint's members, re-read from Kafka;
  members retention deleted in between are counted as lost, exactly; positions resume from the
  checkpoint (replayed rows never move them).
* A stream that drifts from phase A to phase B (the synthetic producer's phases), trained once
  without and once with replay, same seed, same fresh messages: with replay the model keeps more
  of what it learned on A.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import TopicPartition
from faultlib import (
    Rig,
    free_port,
    latest_checkpoint,
    metric,
    missing_offsets,
    read_partition,
    read_trained,
    scrape,
)

from stream_trainer import config, wire
from stream_trainer.config import KafkaConfig
from stream_trainer.kafka import Cluster
from stream_trainer.state.checkpoint import read_state
from tests.pets import produce_pets

# 32 px rows are 4 KiB: a 0.2 MiB store holds 51 members.
STORE_MIB = 0.2
STORE_MEMBERS = int(STORE_MIB * 2**20) // (32 * 32 * 4)


@pytest.mark.faults
def test_a_hard_killed_trainer_restores_its_replay_store_from_the_checkpoint(rig: Rig) -> None:
    for p in (0, 1):
        produce_pets(rig.bootstrap, rig.topic, 150, seed=p, size=40, partition=p)
    log = rig.tmp / "trained.log"
    config_file = rig.write_config("t.yaml", rig.settings(trainer__loop__trained_log=str(log),
                                                          trainer__replay__size_mib=STORE_MIB))
    first = rig.trainer(config_file, "trainer-1")

    def full_store() -> bool:
        state = read_state(rig.checkpoint_dir)
        return state is not None and len(state.replay.get("members", [])) == STORE_MEMBERS

    rig.wait_until(full_store, 180, "a checkpoint with a full replay store", alive=(first,))
    first.kill()
    saved = read_state(rig.checkpoint_dir)
    assert saved is not None
    members = [tuple(m) for m in saved.replay["members"]]
    assert len(members) == STORE_MEMBERS and all(o < saved.offsets[p] for p, o in members)
    # Retention takes the oldest half of one partition's members while the trainer is down. Which
    # partition a backlog trains first depends on which reader reached the broker first: take the
    # one with more members.
    victim = max((0, 1), key=lambda q: sum(1 for p, _ in members if p == q))
    offsets = sorted(o for p, o in members if p == victim)
    cut = offsets[len(offsets) // 2]
    deleted = sum(1 for p, o in members if p == victim and o < cut)
    assert 0 < deleted < len(members)
    cluster = Cluster(KafkaConfig(bootstrap_servers=rig.bootstrap))
    try:
        for f in cluster.admin.delete_records([TopicPartition(rig.topic, victim, cut)]).values():
            f.result(30)
    finally:
        cluster.close()

    port = free_port()
    second = rig.trainer(rig.write_config("t2.yaml", rig.settings(
        trainer__loop__trained_log=str(log), trainer__replay__size_mib=STORE_MIB, trainer__metrics__port=port)),
        "trainer-2")
    # The restore counts both outcomes, restored first: once the "lost" sample exists, both are final.
    text = rig.wait_until(lambda: (t := scrape(port)) and 'replay_restored_total{outcome="lost"' in t and t, 180,
                          "the store restored (stream_trainer_replay_restored_total)", alive=(second,))
    restored = metric(text, "stream_trainer_replay_restored_total", outcome="restored")
    lost = metric(text, "stream_trainer_replay_restored_total", outcome="lost")
    print(f"replay restore: {restored:.0f} members back, {lost:.0f} lost")
    assert (restored, lost) == (STORE_MEMBERS - deleted, deleted)
    assert metric(text, "stream_trainer_replay_members") >= STORE_MEMBERS - deleted
    _assert_restored_pixels_are_the_messages(rig, saved.replay, members, victim, cut)
    ends = dict.fromkeys((0, 1), 150)
    rig.wait_until(lambda: not missing_offsets(Counter((p, o) for p, o, _ in read_trained(log)), ends,
                                               saved.offsets), 180, "the rest trained", alive=(second,))
    assert second.stop() == 0, rig.logs()
    restarted = [(p, o) for p, o, s in read_trained(log) if s > saved.step]
    for q in (0, 1):
        assert min(o for p, o in restarted if p == q) == saved.offsets[q], f"partition {q} resumes from the checkpoint"
    final = latest_checkpoint(rig.checkpoint_dir)
    assert final is not None and final.positions == ends


def _assert_restored_pixels_are_the_messages(rig: Rig, state: dict, members: list[tuple[int, int]], victim: int,
                                             cut: int) -> None:
    """The trainer's restore, run on its checkpoint's store state, holds each member's own pixels.

    The trainer's memory cannot be read from outside, so this runs the trainer's restore
    (``restore_store``) on the same checkpoint state and compares every member's image and mask
    with its message, read by a plain consumer and decoded in members' order.
    """
    from stream_trainer.ingest.pipeline import decode_values
    from stream_trainer.learn.replay import ReplayStore
    from stream_trainer.learn.replay_fetch import restore_store

    store = ReplayStore(int(STORE_MIB * 2**20), 32, seed=0)
    cluster = Cluster(KafkaConfig(bootstrap_servers=rig.bootstrap))
    try:
        restore_store(store, state, cluster, rig.topic, 32, [0, 1])
    finally:
        cluster.close()
    kept = [m for m in members if not (m[0] == victim and m[1] < cut)]
    assert [tuple(m) for m in store.members().tolist()] == kept
    messages = {(p, m.offset()): m.value() for p in (0, 1) for m in read_partition(rig.bootstrap, rig.topic, 30, p)}
    (decoded,) = list(decode_values([messages[m] for m in kept], 32, len(kept)))
    assert decoded["offset"].numpy().tolist() == list(range(len(kept))), "a member's message did not decode"
    images, masks = store.examples()
    for i, (p, o) in enumerate(kept):
        assert np.array_equal(images[i], decoded["image"].numpy()[i]), f"image of member {p}:{o}"
        assert np.array_equal(masks[i], decoded["mask"].numpy()[i]), f"mask of member {p}:{o}"
    assert len({image.tobytes() for image in images}) > len(kept) // 2, "the images are too alike to tell apart"


def _phase_iou(export_dir: Path, settings: config.Settings, phase: str) -> float:
    """Mean IoU of the newest export on the eval images of one phase."""
    import keras

    from stream_trainer.ingest.pipeline import decode_values
    from stream_trainer.quality.evaluate import classifier, confusion, read_eval_messages, scores

    cluster = Cluster(settings.kafka)
    try:
        messages = read_eval_messages(cluster, settings.topics.eval, 1000, 5)
    finally:
        cluster.close()
    values = [m.value for m in messages if wire.phase_of(wire.decode(m.value)[0].source) == phase]
    assert len(values) >= 20, f"only {len(values)} eval images of phase {phase}"
    model = keras.models.load_model(export_dir / "latest" / "model.keras")
    batches = [{"image": b["image"], "mask": b["mask"]} for b in decode_values(values, 32, 32)]
    cm, n = confusion(classifier(model), batches)
    assert n == len(values)
    return scores(cm)[0]


@pytest.mark.faults
@pytest.mark.slow
def test_replay_keeps_more_of_phase_a_than_no_replay_on_a_drifting_stream(rig: Rig, tmp_path: Path) -> None:
    from producer import app as producer_app
    from stream_trainer.app import run_trainer

    phases = [{"name": "a", "images": 600, "shape": "blob", "pet_colour": "warm", "background": "cool-noise"},
              {"name": "b", "images": 600, "shape": "box", "pet_colour": "cool", "background": "warm-stripes"}]
    base = rig.settings(producer__source__phases=phases, producer__source__eval_fraction=0.1,
                        producer__send_eval=True, producer__passes=1, producer__rate=0,
                        producer__partitioner="round_robin", producer__shuffle=True)
    base["topics"]["partitions"] = 1
    producer_settings = config.load(rig.write_config("producer.yaml", base))
    cluster = Cluster(KafkaConfig(bootstrap_servers=rig.bootstrap))
    drift_topic = f"{rig.topic}-drift"
    cluster.ensure_topics({drift_topic: 1, f"{rig.topic}-eval": 1})
    cluster.close()
    producer_settings = config.replace(producer_settings, "topics.train", drift_topic)
    producer_app.run(producer_settings)
    total = 2 * 600 - 2 * 60  # the eval share of each phase goes to the eval topic

    ious = {}
    for replay_mib in (0.0, 1.0):
        run = f"replay-{replay_mib}"
        log = tmp_path / f"{run}.log"
        data = rig.settings(trainer__loop__trained_log=str(log), trainer__replay__size_mib=replay_mib,
                            trainer__replay__fraction=0.5, trainer__source__group_id=f"{rig.group}-{run}",
                            trainer__checkpoint__dir=str(tmp_path / run / "ckpt"),
                            trainer__checkpoint__export_dir=str(tmp_path / run / "export"),
                            trainer__model__base_filters=8, trainer__model__learning_rate=0.003,
                            trainer__pipeline__batch_size=8, trainer__pipeline__seed=1)
        data["topics"]["train"] = drift_topic
        settings = config.load(rig.write_config(f"{run}.yaml", data))
        stop = threading.Event()

        def all_trained(log: Path = log, stop: threading.Event = stop) -> None:
            while not stop.wait(0.5):
                if len(read_trained(log)) >= total:
                    stop.set()

        threading.Thread(target=all_trained, daemon=True).start()
        run_trainer(settings, stop=stop)
        assert len(read_trained(log)) == total
        ious[replay_mib] = (_phase_iou(tmp_path / run / "export", settings, "a"),
                            _phase_iou(tmp_path / run / "export", settings, "b"))
    print(f"drift: IoU on A / B after A then B: without replay {ious[0.0]}, with replay {ious[1.0]}")
    (without_a, without_b), (with_a, with_b) = ious[0.0], ious[1.0]
    assert with_a > without_a + 0.05, ious
    assert with_b >= 0.8 * without_b, ious
