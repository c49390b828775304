"""The wire format is a contract (docs/wire-format.md): messages built by hand from the document,
as a Java or Go team would, without our producer or stream_trainer.wire, must train; one that breaks
the document's mask rule must land in the dead-letter topic with the headers the document lists."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from confluent_kafka import Consumer, Message, Producer, TopicPartition
from PIL import Image
from tensorflow.core.example import example_pb2

from stream_trainer.app import run_trainer
from stream_trainer.kafka import Cluster
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
