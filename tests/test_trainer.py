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
from stream_trainer.app import run_trainer
from stream_trainer.kafka import Cluster
from stream_trainer.state.checkpoint import read_positions
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
                             trainer__loop__eval_every_steps=60, trainer__checkpoint__every_steps=40,
                             trainer__loop__trained_log=str(tmp / "trained.log"),
                             trainer__loop__tensorboard_images_every_s=0)
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
    print("eval mean IoU by step:", [(e.step, round(e.mean_iou, 3)) for e in summary.evals])
    assert first.step == 0 and last.step == 120
    assert last.mean_iou > first.mean_iou + 0.15, [(e.step, e.mean_iou) for e in summary.evals]
    # An absolute floor too: a rise from a very poor start can still be a poor model (0.851 measured).
    assert last.mean_iou >= 0.8, [(e.step, e.mean_iou) for e in summary.evals]
    assert last.pixel_accuracy > 0.8


def _handled(settings: object) -> dict[int, set[int]]:
    """Per partition, the offsets trained (trained log) or dead-lettered (read back from its topic)."""
    out: dict[int, set[int]] = {0: set(), 1: set()}
    for line in Path(settings.trainer.loop.trained_log).read_text().splitlines():  # type: ignore[attr-defined]
        p, o, _ = (int(x) for x in line.split())
        out[p].add(o)
    for headers in _dead_letter_headers(settings).values():
        out[int(headers["dlq.partition"])].add(int(headers["dlq.offset"]))
    return out


def test_checkpoint_holds_step_and_offsets_and_the_group_commit_matches(trained: dict) -> None:
    settings = trained["settings"]
    step, topic, offsets = read_positions(settings.trainer.checkpoint.dir)
    assert (step, topic) == (120, settings.topics.train)
    # "Next to train", derived independently: per partition the first offset neither trained nor
    # dead-lettered, and everything below it was.
    handled = _handled(settings)
    expected = {p: next(o for o in range(len(done) + 1) if o not in done) for p, done in handled.items()}
    assert offsets == expected
    assert all(o >= 20 for o in offsets.values())
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


def test_tensorboard_event_files_hold_every_scalar_the_eval_pictures_and_the_config(trained: dict) -> None:
    """Read back with TensorBoard's own reader: what an ML engineer opens first shows the run."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.util.tensor_util import make_ndarray

    from stream_trainer.loop import tensorboard as tb

    settings, summary = trained["settings"], trained["summary"]
    events = EventAccumulator(settings.trainer.loop.tensorboard_dir, size_guidance={"tensors": 0})
    events.Reload()
    tags = set(events.Tags()["tensors"])
    plugin = {tag: events.SummaryMetadata(tag).plugin_data.plugin_name for tag in tags}
    missing = [tag for tag in tb.SCALARS if plugin.get(tag) != "scalars"]
    assert not missing, f"scalars not written: {missing}; written: {sorted(plugin.items())}"

    def values(tag: str) -> list[tuple[int, object]]:
        return [(e.step, make_ndarray(e.tensor_proto)) for e in events.Tensors(tag)]

    # Every evaluation (each 60 steps, and before each export), with the loop's own scores, rising.
    iou = [(step, float(v)) for step, v in values(tb.EVAL_IOU)]  # type: ignore[arg-type]
    steps = [step for step, _ in iou]
    assert steps[0] == 0 and 60 in steps and steps[-1] == 120 and steps == sorted(set(steps)), iou
    assert iou[-1][1] > iou[0][1] + 0.15, iou
    assert iou[0][1] == pytest.approx(summary.evals[0].mean_iou) and iou[-1][1] == pytest.approx(
        summary.evals[-1].mean_iou)
    pictures = values(tb.SNAPSHOT)
    assert plugin[tb.SNAPSHOT] == "images" and [step for step, _ in pictures] == steps
    width, height, *pngs = pictures[-1][1]  # type: ignore[misc]
    assert (int(width), int(height)) == (3 * 32 + 4, 32) and len(pngs) == 4
    assert all(png[:4] == b"\x89PNG" for png in pngs)
    # The config and the versions, once, at the start step.
    assert plugin[tb.CONFIG] == plugin[tb.VERSIONS] == "text"
    config = values(tb.CONFIG)
    assert [step for step, _ in config] == [0]
    assert f"train: {settings.topics.train}" in config[0][1].item().decode()  # type: ignore[attr-defined]
    versions = values(tb.VERSIONS)[0][1].item().decode()  # type: ignore[attr-defined]
    for name in ("python", "tensorflow", "keras", "tensorflow-io", "confluent-kafka", "librdkafka"):
        assert f"| {name}" in versions, versions
    # Bounded: scalars at the status-line interval, not per step.
    loss_steps = [step for step, _ in values(tb.LOSS)]
    assert 1 <= len(loss_steps) < summary.step - summary.start_step, loss_steps


def _dead_letter_headers(settings: object, expected: int = 8) -> dict[bytes, dict[str, bytes]]:
    c = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "dlq-check",  # type: ignore[attr-defined]
                  "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(settings.topics.dead_letter, 0, 0)])  # type: ignore[attr-defined]
    got: dict[bytes, dict[str, bytes]] = {}
    for _ in range(40):
        msg = c.poll(0.5)
        if msg is not None and msg.error() is None:
            got[msg.key()] = dict(msg.headers()) | {"value": msg.value() or b""}
        if len(got) == expected:
            break
    c.close()
    return got


def test_each_poison_kind_is_dead_lettered_with_its_reason_and_position(trained: dict) -> None:
    settings = trained["settings"]
    got = _dead_letter_headers(settings, len(trained["poison"]))
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
    trained_before = len(Path(settings.trainer.loop.trained_log).read_text().splitlines())
    summary = run_trainer(again)
    assert summary.start_step == 120 and summary.step == 125
    after = read_positions(settings.trainer.checkpoint.dir)
    assert after[0] == 125
    # The positions moved by exactly the fresh messages the 5 new steps trained, from the old ones.
    new = [tuple(int(x) for x in line.split()) for line in
           Path(settings.trainer.loop.trained_log).read_text().splitlines()[trained_before:]]
    assert len(new) == summary.images > 0
    for p in (0, 1):
        mine = sorted(o for q, o, _ in new if q == p)
        assert mine == list(range(before[2][p], after[2][p])), (p, before, after)


def test_stop_event_ends_an_idle_trainer_promptly(kafka_bootstrap: str, tmp_path: Path,
                                                  new_topic: Callable[..., str]) -> None:
    import logging
    import time

    topic = new_topic(partitions=2)
    settings = tiny_settings(kafka_bootstrap, tmp_path, topic)
    stop = threading.Event()
    looping = threading.Event()

    class StatusLine(logging.Handler):
        """The loop's first status line: it is running, its readers blocked in tfio's read."""

        def emit(self, record: logging.LogRecord) -> None:
            if record.name == "stream_trainer.loop.train_loop" and record.getMessage().startswith("step 0 |"):
                looping.set()

    handler = StatusLine()
    loop_log = logging.getLogger("stream_trainer.loop.train_loop")
    level = loop_log.level
    loop_log.setLevel(logging.INFO)
    loop_log.addHandler(handler)
    result: list[object] = []
    runner = threading.Thread(target=lambda: result.append(run_trainer(settings, stop=stop)), daemon=True)
    try:
        runner.start()
        assert looping.wait(90), "the loop never reported its status"
        t0 = time.monotonic()
        stop.set()
        runner.join(20)
        stopped_in = time.monotonic() - t0
    finally:
        loop_log.removeHandler(handler)
        loop_log.setLevel(level)
    assert result, "run_trainer did not return after stop"
    summary = result[0]
    assert summary.stopped_by == "signal" and summary.step == 0  # type: ignore[attr-defined]
    assert stopped_in < 5
