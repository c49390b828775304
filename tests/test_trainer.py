"""The trainer end to end, in-process, against the real broker: it learns, it checkpoints the
offsets it trained, it commits them, it exports, and malformed messages go to the dead-letter topic."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from PIL import Image
from tensorflow.core.example import example_pb2

from producer.sources.synthetic import make_record
from stream_trainer import wire
from stream_trainer.app import run_trainer
from stream_trainer.checkpoint import read_positions
from stream_trainer.kafka import Cluster
from tests.pets import produce_pets, tiny_settings


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


def _jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG")
    return buf.getvalue()


def _example(**features: bytes | int) -> bytes:
    ex = example_pb2.Example()
    for key, value in features.items():
        f = ex.features.feature[key.replace("__", "/")]
        if isinstance(value, int):
            f.int64_list.value.append(value)
        else:
            f.bytes_list.value.append(value)
    return ex.SerializeToString()


def poison_messages() -> dict[str, bytes]:
    """One malformed message per rejection reason, keyed by the reason expected."""
    img = np.full((40, 40, 3), 120, np.uint8)
    mask = np.full((40, 40), 2, np.uint8)
    good_jpeg, good_png = _jpeg(img), _png(mask)
    return {
        "parse": b"\xff\x00 definitely not a protobuf \x13\x37",
        "missing_field": _example(format_version=1, image__encoded=good_jpeg),
        "version": _example(format_version=2, image__encoded=good_jpeg, mask__encoded=good_png),
        "image_decode": _example(format_version=1, image__encoded=good_jpeg[: len(good_jpeg) // 3],
                                 mask__encoded=good_png),
        "mask_decode": _example(format_version=1, image__encoded=good_jpeg, mask__encoded=b"\x89PNG broken"),
        "shape_mismatch": _example(format_version=1, image__encoded=good_jpeg,
                                   mask__encoded=_png(np.full((20, 40), 2, np.uint8))),
        "mask_values": _example(format_version=1, image__encoded=good_jpeg,
                                mask__encoded=_png(np.full((40, 40), 7, np.uint8))),
    }


@pytest.fixture(scope="module")
def trained(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """One bounded training run shared by the assertions below (training is the slow part)."""
    tmp = tmp_path_factory.mktemp("trained")
    topic = f"e2e-{tmp.name[-6:]}"
    settings = tiny_settings(kafka_bootstrap, tmp, topic, trainer__loop__max_steps=120,
                             trainer__loop__eval_every_steps=60, trainer__checkpoint__every_steps=40)
    cluster = Cluster(settings.kafka)
    cluster.ensure_topics({topic: 2, settings.topics.eval: 1})
    # Poison first, in partition 0, so later good messages surround it.
    produce_pets(kafka_bootstrap, topic, 40, seed=1, partition=0)
    bad = poison_messages()
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    for reason, value in bad.items():
        p.produce(topic, key=reason.encode(), value=value, partition=0)
    p.produce(topic, key=b"empty", value=b"", partition=0)
    assert p.flush(10) == 0
    produce_pets(kafka_bootstrap, topic, 1400, seed=2, eval_topic=settings.topics.eval, eval_count=48)
    summary = run_trainer(settings)
    return {"settings": settings, "summary": summary, "cluster": cluster, "poison": {**bad, "empty": b""}}


def test_model_learns_eval_iou_rises_above_the_untrained_model(trained: dict) -> None:
    summary = trained["summary"]
    assert summary.step == 120 and summary.stopped_by == "max_steps"
    first, last = summary.evals[0], summary.evals[-1]
    assert first.step == 0 and last.step == 120
    assert last.mean_iou > first.mean_iou + 0.15, [(e.step, e.mean_iou) for e in summary.evals]
    assert last.pixel_accuracy > 0.8


def test_checkpoint_holds_step_and_offsets_and_the_group_commit_matches(trained: dict) -> None:
    settings, summary = trained["settings"], trained["summary"]
    step, topic, offsets = read_positions(settings.trainer.checkpoint.dir)
    assert (step, topic) == (120, settings.topics.train)
    assert offsets == summary.positions and set(offsets) == {0, 1}
    # Offsets are "next to train": at most the messages read so far, at least a good share of them.
    images = summary.images + len(trained["poison"])
    assert sum(offsets.values()) <= images
    assert sum(offsets.values()) >= images - 3 * settings.trainer.pipeline.shuffle_buffer
    group = Cluster(settings.kafka, group_id=settings.trainer.source.group_id)
    assert group.committed(settings.topics.train, [0, 1]) == offsets
    group.close()


def test_versioned_exports_follow_the_checkpoints_and_the_newest_one_serves(trained: dict) -> None:
    import json

    import tensorflow as tf

    settings = trained["settings"]
    export = Path(settings.trainer.checkpoint.export_dir)
    versions = sorted(int(p.name) for p in export.iterdir() if p.name.isdigit())
    # A checkpoint every 40 steps (plus the final one at 120, a step already exported), keep 5.
    assert versions == [40, 80, 120]
    assert (export / "latest").resolve() == (export / "120").resolve()
    meta = json.loads((export / "120" / "model.json").read_text())
    assert meta["step"] == 120 and meta["scores"]["mean_iou"] == trained["summary"].evals[-1].mean_iou
    served = tf.saved_model.load(str(export / "120"))
    record = make_record(0, seed=5, min_size=50, max_size=60)
    out = served.signatures["serving_default"](image_bytes=tf.constant([record.image]))
    assert out["classes"].shape == (1, 32, 32) and out["classes"].dtype == tf.int64


def test_eval_snapshot_pictures_are_written(trained: dict) -> None:
    snaps = Path(trained["settings"].trainer.loop.snapshot_dir)
    assert (snaps / "latest.png").read_bytes()[:4] == b"\x89PNG"
    assert (snaps / "eval-step-00000120.png").exists()


def test_each_poison_kind_is_dead_lettered_with_its_reason_and_position(trained: dict) -> None:
    settings = trained["settings"]
    c = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "dlq-check",
                  "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(settings.topics.dead_letter, 0, 0)])
    got: dict[bytes, dict[str, bytes]] = {}
    for _ in range(40):
        msg = c.poll(0.5)
        if msg is not None and msg.error() is None:
            got[msg.key()] = {k: v for k, v in msg.headers()} | {"value": msg.value() or b""}
        if len(got) == len(trained["poison"]):
            break
    c.close()
    assert {k.decode() for k in got} == set(trained["poison"])
    for key, headers in got.items():
        assert headers["dlq.reason"] == key, headers["dlq.detail"]
        assert headers["value"] == trained["poison"][key.decode()]  # nothing lost: the original value
        assert headers["dlq.partition"] == b"0" and 40 <= int(headers["dlq.offset"]) < 48
        assert headers["dlq.topic"] == settings.topics.train.encode()


def test_restart_resumes_from_the_checkpoint_step_and_offsets(trained: dict, tmp_path: Path) -> None:
    import dataclasses

    settings = trained["settings"]
    loop = dataclasses.replace(settings.trainer.loop, max_steps=5, eval_every_steps=0)
    again = dataclasses.replace(settings, trainer=dataclasses.replace(settings.trainer, loop=loop))
    before = read_positions(settings.trainer.checkpoint.dir)
    summary = run_trainer(again)
    assert summary.start_step == 120 and summary.step == 125
    after = read_positions(settings.trainer.checkpoint.dir)
    assert after[0] == 125
    assert all(after[2][p] >= before[2][p] for p in before[2])


def test_stop_event_ends_an_idle_trainer_promptly(kafka_bootstrap: str, tmp_path: Path,
                                                  new_topic: Callable[..., str]) -> None:
    import time

    topic = new_topic(partitions=2)
    settings = tiny_settings(kafka_bootstrap, tmp_path, topic)
    stop = threading.Event()
    threading.Timer(6.0, stop.set).start()
    t0 = time.monotonic()
    summary = run_trainer(settings, stop=stop)
    assert summary.stopped_by == "signal" and summary.step == 0
    assert time.monotonic() - t0 < 20
