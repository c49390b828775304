"""The wire format is a contract (docs/wire-format.md): messages built by hand from the document,
as a Java or Go team would, without our producer or stream_trainer.wire, must train."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from confluent_kafka import Producer
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


def test_hand_built_messages_from_the_document_train(kafka_bootstrap: str, tmp_path: Path,
                                                    new_topic: Callable[..., str]) -> None:
    topic = new_topic(partitions=1)
    log = tmp_path / "trained.log"
    settings = tiny_settings(kafka_bootstrap, tmp_path, topic, trainer__loop__max_steps=20,
                             trainer__loop__trained_log=str(log))
    p = Producer({"bootstrap.servers": kafka_bootstrap})
    for i in range(200):
        p.produce(topic, key=None if i % 5 == 0 else f"hand-{i}".encode(), value=hand_made_message(i))
    assert p.flush(10) == 0
    summary = run_trainer(settings)
    assert summary.step == 20
    trained = [line.split() for line in log.read_text().splitlines()]
    assert len(trained) == 20 * 8
    assert len({int(o) for _, o, _ in trained}) == 160
    c = Cluster(settings.kafka)
    assert c.watermarks(settings.topics.dead_letter, [0])[0].high == 0  # nothing was rejected
    c.close()
