"""The wire format is a contract (docs/wire-format.md): messages built by hand from the document,
as a Java or Go team would, without our producer or stream_trainer.wire, must train; one that breaks
the document's mask rule must land in the dead-letter topic with the headers the document lists."""

from __future__ import annotations

import io
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from PIL import Image
from tensorflow.core.example import example_pb2

from stream_trainer import metrics
from stream_trainer.app import run_trainer
from stream_trainer.errors import InputPipelineError
from stream_trainer.ingest import pipeline
from stream_trainer.kafka import Cluster
from stream_trainer.quality import poison
from tests.pets import tiny_settings


def hand_made_message(i: int) -> bytes:
    rng = np.random.default_rng(i)
    h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
    trimap = np.full((h, w), 2, np.uint8)  # background
    trimap[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 3  # border band
    trimap[h // 4 + 2: 3 * h // 4 - 2, w // 4 + 2: 3 * w // 4 - 2] = 1  # pet
    image = np.where(trimap[..., None] == 1, [200, 60, 40], [40, 60, 90]).astype(np.uint8)
    img_buf, mask_buf = io.BytesIO(), io.BytesIO()
    Image.fromarray(image).save(img_buf, "PNG" if i % 3 == 0 else "JPEG")  # both encodings allowed
    Image.fromarray(trimap, mode="L").save(mask_buf, "PNG")
    ex = example_pb2.Example()
    f = ex.features.feature
    f["format_version"].int64_list.value.append(1)
    f["image/encoded"].bytes_list.value.append(img_buf.getvalue())
    f["mask/encoded"].bytes_list.value.append(mask_buf.getvalue())
    if i % 2:  # optional fields may be absent
        f["image/id"].bytes_list.value.append(f"hand-{i}".encode())
        f["produce_ts_ms"].int64_list.value.append(int(time.time() * 1000))
        f["some/extra_feature"].float_list.value.append(1.5)  # unknown features are ignored
    return ex.SerializeToString()


def palette_mask_message() -> bytes:
    """A valid image with a palette-indexed trimap (indices 1, 2, 3), as Java's ImageIO writes an
    indexed image: the document requires 8-bit grayscale, so this is dead-lettered as mask_format."""
    trimap = np.full((48, 64), 2, np.uint8)
    trimap[10:38, 12:52] = 1
    indexed = Image.fromarray(trimap, mode="P")
    indexed.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])
    img_buf, mask_buf = io.BytesIO(), io.BytesIO()
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(img_buf, "JPEG")
    indexed.save(mask_buf, "PNG")
    assert mask_buf.getvalue()[25] == 3  # IHDR colour type 3: palette
    ex = example_pb2.Example()
    f = ex.features.feature
    f["format_version"].int64_list.value.append(1)
    f["image/encoded"].bytes_list.value.append(img_buf.getvalue())
    f["mask/encoded"].bytes_list.value.append(mask_buf.getvalue())
    return ex.SerializeToString()


PALETTE_OFFSET = 3


def _dead_letters(bootstrap: str, topic: str, expected: int, timeout_s: float = 15.0) -> list[Message]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{topic}-reader", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    got: list[Message] = []
    deadline = time.monotonic() + timeout_s
    while len(got) < expected and time.monotonic() < deadline:
        msg = c.poll(0.5)
        if msg is not None and msg.error() is None:
            got.append(msg)
    c.close()
    return got


def test_hand_built_messages_from_the_document_train(kafka_bootstrap: str, tmp_path: Path,
                                                    new_topic: Callable[..., str]) -> None:
    topic = new_topic(partitions=1)
    log = tmp_path / "trained.log"
    settings = tiny_settings(kafka_bootstrap, tmp_path, topic, trainer__loop__max_steps=20,
                             trainer__loop__trained_log=str(log))
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    palette = palette_mask_message()
    for i in range(200):
        value = palette if i == PALETTE_OFFSET else hand_made_message(i)
        p.produce(topic, key=None if i % 5 == 0 else f"hand-{i}".encode(), value=value)
    assert p.flush(10) == 0
    summary = run_trainer(settings)
    assert summary.step == 20
    trained = [int(o) for _, o, _ in (line.split() for line in log.read_text().splitlines())]
    # One partition trains in offset order: every hand-built message up to the last one trained,
    # once each, and never the palette-mask one.
    assert len(trained) == summary.images >= 20
    assert sorted(trained) == [o for o in range(max(trained) + 1) if o != PALETTE_OFFSET]

    # Only the palette mask was rejected, and its record says so in the documented headers.
    (dead,) = _dead_letters(kafka_bootstrap, settings.topics.dead_letter, expected=1)
    assert (dead.key(), dead.value()) == (f"hand-{PALETTE_OFFSET}".encode(), palette)
    headers = {k: v.decode("utf-8") for k, v in dead.headers()}
    assert headers.keys() == {"dlq.topic", "dlq.partition", "dlq.offset", "dlq.reason", "dlq.detail"}
    assert headers["dlq.topic"] == topic
    assert (headers["dlq.partition"], headers["dlq.offset"]) == ("0", str(PALETTE_OFFSET))
    assert headers["dlq.reason"] == "mask_format", headers["dlq.detail"]
    assert headers["dlq.detail"].startswith("mask PNG is palette-indexed (colour type 3")
    c = Cluster(settings.kafka)
    assert c.watermarks(settings.topics.dead_letter, [0])[0].high == 1
    c.close()


# -- what the document says about edge cases, from raw protobuf bytes ------------------------------
# Written field by field (tag, length, bytes), as a hand-rolled encoder in any language would: the
# cases where protobuf libraries and TensorFlow's Example parser read the same bytes differently
# cannot be built with a protobuf library at all.


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, data: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def _bytes_list(*values: bytes) -> bytes:
    return _field(1, b"".join(_field(1, v) for v in values))  # Feature.bytes_list = 1, BytesList.value = 1


def _int64_list(*values: int) -> bytes:
    return _field(3, _field(1, b"".join(_varint(v) for v in values)))  # Feature.int64_list = 3, packed


def _entry(key: str, feature: bytes) -> bytes:
    return _field(1, _field(1, key.encode()) + _field(2, feature))  # Features.feature map entry


def _raw_example(*entries: bytes) -> bytes:
    return _field(1, b"".join(entries))  # Example.features = 1


def _encoded(pixels: np.ndarray, fmt: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


_TRIMAP = np.full((40, 48), 2, np.uint8)
_TRIMAP[8:32, 10:38] = 1
_RGB = np.dstack([np.full((40, 48), 200, np.uint8), np.tile(np.arange(48, dtype=np.uint8) * 5, (40, 1)),
                  np.full((40, 48), 30, np.uint8)])
_IMAGE, _MASK = _encoded(_RGB, "PNG"), _encoded(_TRIMAP, "PNG")
_VERSION, _IMG, _MSK = (_entry("format_version", _int64_list(1)), _entry("image/encoded", _bytes_list(_IMAGE)),
                        _entry("mask/encoded", _bytes_list(_MASK)))

# (message, the dlq.reason the document gives, or None: it trains)
RAW_CASES = {
    "all_required_fields": (_raw_example(_VERSION, _IMG, _MSK), None),
    # Optional fields the trainer does not read train whatever their type or count.
    "split_as_int64_list": (_raw_example(_VERSION, _IMG, _MSK, _entry("split", _int64_list(7))), None),
    "source_with_two_values": (_raw_example(_VERSION, _IMG, _MSK, _entry("source", _bytes_list(b"a", b"b"))), None),
    # produce_ts_ms is read: present, it must be one int64.
    "produce_ts_ms_as_bytes": (_raw_example(_VERSION, _IMG, _MSK, _entry("produce_ts_ms", _bytes_list(b"1"))),
                               "field_type"),
    "produce_ts_ms_two_values": (_raw_example(_VERSION, _IMG, _MSK, _entry("produce_ts_ms", _int64_list(1, 2))),
                                 "field_type"),
    # A feature with two list fields (protobuf: the last kind wins): the parser reads the first.
    "bytes_list_then_int64_list": (_raw_example(_VERSION, _entry("image/encoded", _bytes_list(_IMAGE) + _int64_list(5)),
                                                _MSK), None),
    "int64_list_then_bytes_list": (_raw_example(_VERSION, _entry("image/encoded", _int64_list(5) + _bytes_list(_IMAGE)),
                                                _MSK), "parse"),
    # One list field written twice (protobuf: merged into two values): the parser reads the first.
    "bytes_list_twice_good_first": (_raw_example(_VERSION, _entry("image/encoded", _bytes_list(_IMAGE) + _bytes_list(
        b"junk")), _MSK), None),
    "bytes_list_twice_junk_first": (_raw_example(_VERSION, _entry("image/encoded", _bytes_list(b"junk") + _bytes_list(
        _IMAGE)), _MSK), "image_decode"),
    # A map key written twice: the last entry counts (as in protobuf).
    "key_twice_good_last": (_raw_example(_VERSION, _entry("mask/encoded", _bytes_list(b"junk")), _IMG, _MSK), None),
    "key_twice_junk_last": (_raw_example(_VERSION, _IMG, _MSK, _entry("mask/encoded", _bytes_list(b"junk"))),
                            "mask_decode"),
}


@pytest.mark.parametrize("name", list(RAW_CASES))
def test_each_documented_edge_case_built_from_raw_protobuf_bytes(name: str) -> None:
    value, reason = RAW_CASES[name]
    verdict = poison.examine(value, 32)
    assert (verdict.reason if verdict else None) == reason, verdict
    try:  # the pipeline agrees: it trains exactly the messages the classification passes
        pipeline.decode_example(tf.constant(value), 32)
        trains = True
    except tf.errors.InvalidArgumentError:
        trains = False
    assert trains == (reason is None)


def test_an_rgba_image_trains_with_its_alpha_channel_dropped() -> None:
    alpha = np.tile(np.arange(40, dtype=np.uint8)[:, None] * 6, (1, 48))  # alpha varies: it must not matter
    rgba = _raw_example(_VERSION, _entry("image/encoded", _bytes_list(_encoded(np.dstack([_RGB, alpha]), "PNG"))),
                        _MSK)
    assert poison.examine(rgba, 32) is None
    got = pipeline.decode_example(tf.constant(rgba), 32)["image"].numpy()
    want = pipeline.decode_example(tf.constant(_raw_example(_VERSION, _IMG, _MSK)), 32)["image"].numpy()
    np.testing.assert_array_equal(got, want)  # the colour channels as they are: not blended with alpha


# Java's ImageIO, as a Java producer writes the trimap (tests/java/Masks.java): which IndexColorModel
# masks are written as 8-bit greyscale (and train) and which as palette PNGs (mask_format).
JAVA_MASKS = {"byte_gray": None, "grey_ramp_256": None, "grey_4": None, "byte_indexed": "mask_format",
              "colours_4": "mask_format", "grey_other": "mask_format", "grey_reversed": "mask_format"}


def test_java_imageio_masks_train_or_are_mask_format_as_the_document_says(tmp_path: Path) -> None:
    java = shutil.which("java")
    if java is None:
        pytest.skip("no java (the Kafka broker of the other tests needs one)")
    source = Path(__file__).parent / "java" / "Masks.java"
    subprocess.run([java, str(source), str(tmp_path)], check=True, timeout=120, capture_output=True)
    image = _encoded(np.full((48, 64, 3), 90, np.uint8), "JPEG")
    for name, reason in JAVA_MASKS.items():
        mask = (tmp_path / f"{name}.png").read_bytes()
        value = _raw_example(_VERSION, _entry("image/encoded", _bytes_list(image)),
                             _entry("mask/encoded", _bytes_list(mask)))
        verdict = poison.examine(value, 32)
        assert (verdict.reason if verdict else None) == reason, (name, verdict, mask[24:26].hex())


# -- a good message is never dead-lettered -------------------------------------------------------


def test_a_message_the_pipeline_drops_but_that_decodes_alone_stops_the_trainer(
        kafka_bootstrap: str, tmp_path: Path, new_topic: Callable[..., str], monkeypatch: pytest.MonkeyPatch) -> None:
    topic = new_topic(partitions=1)
    settings = tiny_settings(kafka_bootstrap, tmp_path, topic, trainer__loop__max_steps=20,
                             trainer__loop__max_seconds=90)
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(30):
        p.produce(topic, value=hand_made_message(i))
    assert p.flush(10) == 0
    real = pipeline.decode_message

    def fails_at_offset_5(value: tf.Tensor, partition: tf.Tensor, offset: tf.Tensor, size: int,
                          max_pixels: int = pipeline.MAX_PIXELS) -> dict[str, tf.Tensor]:
        # Inside the pipeline only (a resource error, an interrupted op): the message itself is fine.
        with tf.control_dependencies([tf.debugging.Assert(tf.not_equal(offset, 5), ["injected"])]):
            return real(tf.identity(value), partition, offset, size, max_pixels)

    monkeypatch.setattr(pipeline, "decode_message", fails_at_offset_5)
    with pytest.raises(InputPipelineError, match=rf"message {topic}\[0\] offset 5 decodes on its own, yet the "
                                                 r"decode pipeline dropped it: it is not malformed"):
        run_trainer(settings)
    c = Cluster(settings.kafka)
    try:
        assert c.watermarks(settings.topics.dead_letter, [0])[0].high == 0, "a good message was dead-lettered"
        assert c.committed(topic, [0]).get(0, 0) <= 5, "the group moved past the message"
    finally:
        c.close()


# -- eval-topic dead letters: once per message, across restarts --------------------------------


@pytest.mark.faults
@pytest.mark.slow  # two trainer starts: in make test-faults (the budget of the default run)
def test_a_malformed_eval_message_is_dead_lettered_and_counted_once_across_restarts(
        kafka_bootstrap: str, tmp_path: Path, new_topic: Callable[..., str]) -> None:
    topic = new_topic(partitions=1)
    settings = tiny_settings(kafka_bootstrap, tmp_path, topic, trainer__loop__max_steps=8,
                             trainer__loop__eval_every_steps=4)
    eval_topic, dead_topic = settings.topics.eval, settings.topics.dead_letter
    c = Cluster(settings.kafka)
    c.ensure_topics({eval_topic: 1})
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(200):
        p.produce(topic, value=hand_made_message(i))
    for i in range(6):
        p.produce(eval_topic, value=palette_mask_message() if i == 2 else hand_made_message(1000 + i))
    assert p.flush(10) == 0
    counted = metrics.DEAD_LETTERED.labels(eval_topic, "mask_format")
    try:
        for start in (1, 2):
            before = counted._value.get()
            summary = run_trainer(settings)
            assert summary.step == 8 * start
            letters = _dead_letters(kafka_bootstrap, dead_topic, expected=2, timeout_s=5)
            assert [(h["dlq.topic"], h["dlq.offset"]) for h in
                    ({k: v.decode() for k, v in m.headers()} for m in letters)] == [(eval_topic, "2")], start
            assert counted._value.get() - before == (1 if start == 1 else 0), f"counted again at start {start}"
    finally:
        c.close()
