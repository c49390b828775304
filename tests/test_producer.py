"""pet-producer against the session's real Kafka broker: what arrives in the topics, how fast,
how often, and what is skipped. Small images (64-96 px) and a few dozen messages per test.
"""

from __future__ import annotations

import io
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition
from PIL import Image

from producer import app
from producer.sources import synthetic
from stream_trainer import config, wire
from stream_trainer.config import KafkaConfig, Settings
from stream_trainer.kafka import Cluster


def make_settings(kafka_config: KafkaConfig, overrides: dict[str, object] | None = None) -> Settings:
    """Defaults for a test: unique topics, tiny synthetic images, no metrics port, one pass."""
    tag = uuid.uuid4().hex[:10]
    values: dict[str, object] = {
        "kafka.bootstrap_servers": kafka_config.bootstrap_servers,
        "kafka.connect_timeout_s": 10,
        "topics.train": f"prod-{tag}",
        "topics.eval": f"prod-{tag}-eval",
        "topics.dead_letter": f"prod-{tag}-dlq",
        "topics.partitions": 2,
        "producer.metrics.port": 0,
        "producer.source.min_size": 64,
        "producer.source.max_size": 96,
        "producer.source.count": 10,
        "producer.source.eval_fraction": 0.0,
    }
    values.update(overrides or {})
    return config.load(None, values)


def topic_count(cluster: Cluster, topic: str) -> int:
    parts = cluster.partitions(topic)
    return sum(w.high - w.low for w in cluster.watermarks(topic, parts).values())


def consume_all(kafka_config: KafkaConfig, topic: str, expected: int,
                timeout_s: float = 20.0) -> list[tuple[str, bytes]]:
    """Every (key, value) in ``topic``, read from the beginning until ``expected`` arrived."""
    consumer = Consumer({"bootstrap.servers": kafka_config.bootstrap_servers, "group.id": f"read-{uuid.uuid4().hex}",
                         "enable.auto.commit": False})
    try:
        md = consumer.list_topics(topic, timeout=10)
        consumer.assign([TopicPartition(topic, p, 0) for p in md.topics[topic].partitions])
        out: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + timeout_s
        while len(out) < expected and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                key, value = msg.key(), msg.value()
                assert isinstance(key, bytes) and isinstance(value, bytes)
                out.append((key.decode(), value))
        return out
    finally:
        consumer.close()


def test_synthetic_records_arrive_byte_identical_keyed_by_image_id(kafka_config: KafkaConfig) -> None:
    settings = make_settings(kafka_config, {"producer.source.count": 12, "producer.source.eval_fraction": 0.25})
    summary = app.run(settings)
    assert (summary.sent, summary.failed, summary.eval_sent) == (12, 0, 3)

    expected = {r.image_id: r for r in synthetic.generate(12, min_size=64, max_size=96, eval_fraction=0.25)}
    train = consume_all(kafka_config, settings.topics.train, 9)
    evals = consume_all(kafka_config, settings.topics.eval, 3)
    for messages, split in ((train, "train"), (evals, "test")):
        for key, value in messages:
            record, ts = wire.decode(value)
            assert key == record.image_id
            assert record == expected[key]
            assert record.split == split
            assert abs(ts / 1000 - time.time()) < 120
    assert sorted(k for k, _ in train + evals) == sorted(expected)


def _write_pet_dir(root: Path, names: list[str], *, missing_trimap: tuple[str, ...] = (),
                   corrupt: tuple[str, ...] = (), not_an_image: tuple[str, ...] = ()) -> None:
    (root / "images").mkdir(parents=True)
    (root / "annotations" / "trimaps").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i, name in enumerate(names):
        w, h = 64 + i % 5 * 8, 72 + i % 3 * 8
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format="JPEG")
        data = buf.getvalue()
        if name in corrupt:
            data = data[: len(data) // 3]  # truncated JPEG: right magic, undecodable
        if name in not_an_image:
            data = b"<html>not an image</html>"
        (root / "images" / f"{name}.jpg").write_bytes(data)
        if name not in missing_trimap:
            mask = np.full((h, w), 2, dtype=np.uint8)
            mask[10:30, 10:30], mask[9, 9:31] = 1, 3
            Image.fromarray(mask, "L").save(root / "annotations" / "trimaps" / f"{name}.png")


def test_dir_source_sends_files_as_is_and_honours_split_lists(kafka_config: KafkaConfig, tmp_path: Path) -> None:
    names = [f"Cat_{i}" for i in range(8)]
    _write_pet_dir(tmp_path, names)
    (tmp_path / "annotations" / "trainval.txt").write_text("".join(f"{n} 1 1 1\n" for n in names[:6]))
    (tmp_path / "annotations" / "test.txt").write_text("# comment\n" + "".join(f"{n} 1 1 1\n" for n in names[6:]))
    settings = make_settings(kafka_config, {"producer.source.kind": "dir", "producer.source.path": str(tmp_path)})

    summary = app.run(settings)

    assert (summary.sent, summary.eval_sent, summary.skipped) == (8, 2, {})
    got = consume_all(kafka_config, settings.topics.train, 6) + consume_all(kafka_config, settings.topics.eval, 2)
    assert len(got) == 8
    for key, value in got:
        record, _ = wire.decode(value)
        assert record.image == (tmp_path / "images" / f"{key}.jpg").read_bytes()
        assert record.mask == (tmp_path / "annotations" / "trimaps" / f"{key}.png").read_bytes()
        assert record.split == ("test" if key in names[6:] else "train")


def test_corrupt_files_and_missing_trimaps_are_skipped_and_counted_once(
        kafka_config: KafkaConfig, cluster: Cluster, tmp_path: Path) -> None:
    names = [f"Dog_{i}" for i in range(8)]
    _write_pet_dir(tmp_path, names, missing_trimap=("Dog_1",), corrupt=("Dog_2", "Dog_3"), not_an_image=("Dog_4",))
    settings = make_settings(kafka_config, {"producer.source.kind": "dir", "producer.source.path": str(tmp_path),
                                              "producer.passes": 2})

    summary = app.run(settings)

    assert summary.skipped == {"missing_trimap": 1, "unreadable": 3}
    assert (summary.sent, summary.failed) == (2 * 4, 0)
    assert topic_count(cluster, settings.topics.train) == 8


def test_oversize_messages_are_skipped_and_counted(kafka_config: KafkaConfig, cluster: Cluster) -> None:
    # 64-96 px noisy JPEGs are 3-8 KB; a 4 KB limit lets some through and stops others.
    settings = make_settings(kafka_config, {"producer.message_max_bytes": 4500, "producer.source.count": 12})
    sizes = [len(wire.encode(r, 0)) + len(r.image_id) for r in synthetic.generate(12, min_size=64, max_size=96)]
    too_big = sum(s > 4500 for s in sizes)
    assert 0 < too_big < 12, sizes

    summary = app.run(settings)

    assert summary.skipped == {"oversize": too_big}
    assert summary.sent == topic_count(cluster, settings.topics.train) == 12 - too_big


def test_bounded_passes_send_exactly_passes_times_dataset(kafka_config: KafkaConfig, cluster: Cluster) -> None:
    settings = make_settings(kafka_config, {"producer.passes": 3, "producer.source.count": 10,
                                              "producer.source.eval_fraction": 0.2})
    summary = app.run(settings)
    # Train records every pass; the eval set only in the first.
    assert topic_count(cluster, settings.topics.train) == 3 * 8
    assert topic_count(cluster, settings.topics.eval) == 2
    assert (summary.sent, summary.eval_sent) == (26, 2)


def test_round_robin_spreads_messages_evenly_over_partitions(kafka_config: KafkaConfig, cluster: Cluster) -> None:
    settings = make_settings(kafka_config, {"producer.partitioner": "round_robin", "topics.partitions": 3,
                                              "producer.source.count": 12, "producer.shuffle": False})
    app.run(settings)
    marks = cluster.watermarks(settings.topics.train, cluster.partitions(settings.topics.train))
    assert [w.high for w in marks.values()] == [4, 4, 4]


def test_rate_limit_holds_within_a_quarter(kafka_config: KafkaConfig, cluster: Cluster) -> None:
    settings = make_settings(kafka_config, {"producer.rate": 20.0, "producer.source.count": 40})
    summary = app.run(settings)
    assert summary.sent == 40
    # 40 messages at 20/s: the last leaves at 1.95 s; allow 25% either way.
    assert 1.5 <= summary.seconds <= 2.5, summary.seconds


def test_stop_event_ends_an_endless_run_with_nothing_lost(kafka_config: KafkaConfig, cluster: Cluster) -> None:
    settings = make_settings(kafka_config, {"producer.passes": 0, "producer.rate": 50.0})
    stop = threading.Event()
    timer = threading.Timer(1.5, stop.set)
    timer.start()
    try:
        summary = app.run(settings, stop=stop)
    finally:
        timer.cancel()
    assert summary.sent > 20  # more than two passes of 10: it really was looping
    assert summary.failed == 0
    assert topic_count(cluster, settings.topics.train) == summary.sent


def test_limit_stops_after_that_many_messages(kafka_config: KafkaConfig, cluster: Cluster) -> None:
    settings = make_settings(kafka_config, {"producer.passes": 0})
    summary = app.run(settings, limit=15)
    assert summary.sent == 15 == topic_count(cluster, settings.topics.train)


def test_missing_topic_without_create_topics_names_it(kafka_config: KafkaConfig) -> None:
    from stream_trainer.errors import ConfigError

    settings = make_settings(kafka_config, {"producer.create_topics": False})
    with pytest.raises(ConfigError, match=settings.topics.train):
        app.run(settings)


def test_tfds_source_without_tensorflow_datasets_is_a_one_line_config_error(
        kafka_config: KafkaConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    from stream_trainer.errors import ConfigError

    real_import: Callable[..., object] = builtins.__import__

    def no_tfds(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("tensorflow_datasets"):
            msg = "No module named 'tensorflow_datasets'"
            raise ImportError(msg)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tfds)
    settings = make_settings(kafka_config, {"producer.source.kind": "tfds"})
    with pytest.raises(ConfigError, match="tensorflow_datasets is not installed") as info:
        app.run(settings)
    assert "\n" not in str(info.value)


# name -> (split, list line, RGB colour): breeds and species as in the real lists (class, species, breed id).
_TFDS_PETS = {"Abyssinian_1": ("train", "1 1 1", (200, 90, 40)), "Bengal_7": ("train", "6 1 2", (40, 160, 90)),
              "beagle_3": ("train", "5 2 3", (60, 80, 210)), "pug_12": ("train", "26 2 18", (230, 220, 60)),
              "Sphynx_2": ("test", "34 1 12", (120, 40, 160)), "boxer_9": ("test", "9 2 5", (250, 250, 250))}


def _tfds_trimap(index: int, h: int, w: int) -> np.ndarray:
    """A pet in the upper left, a different size per image: any flip, crop or swap shows."""
    trimap = np.full((h, w), wire.BACKGROUND, np.uint8)
    trimap[2: h // 2 + index + 2, 2: w // 2 + 2] = wire.BORDER
    trimap[4: h // 2 + index, 4: w // 2] = wire.PET
    return trimap


def _build_tfds_pets(data_dir: Path, raw: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """A tiny ``oxford_iiit_pet`` in tfds's own on-disk format, written by tfds's real builder.

    The raw files are laid out as the dataset's two archives unpack (images/, annotations/ with
    trimaps/ and the split lists); only tfds's download step is pointed at them instead of the
    network, as tfds's own DatasetBuilderTestCase does. Returns name -> (RGB pixels, trimap).
    """
    import tensorflow_datasets as tfds

    (raw / "images").mkdir(parents=True)
    (raw / "annotations" / "trimaps").mkdir(parents=True)
    pixels = {}
    lists: dict[str, str] = {"train": "", "test": ""}
    for i, (name, (split, line, colour)) in enumerate(_TFDS_PETS.items()):
        h, w = 40 + 4 * i, 56 - 2 * i
        trimap = _tfds_trimap(i, h, w)
        # The pet in its colour on a dark background: a flipped or swapped image shows.
        rgb = np.where(trimap[..., None] == wire.PET, np.array(colour, np.uint8), np.uint8(30)).astype(np.uint8)
        Image.fromarray(rgb).save(raw / "images" / f"{name}.jpg", quality=95)
        Image.fromarray(trimap, "L").save(raw / "annotations" / "trimaps" / f"{name}.png")
        lists[split] += f"{name} {line}\n"
        pixels[name] = (rgb, trimap)
    (raw / "annotations" / "trainval.txt").write_text(lists["train"])
    (raw / "annotations" / "test.txt").write_text(lists["test"])

    builder = tfds.builder("oxford_iiit_pet", data_dir=str(data_dir))
    with mock.patch.object(tfds.download.DownloadManager, "download_and_extract",
                           lambda _self, urls: {key: str(raw) for key in urls}):
        builder.download_and_prepare()
    return pixels


def test_tfds_source_replays_a_prepared_dataset_through_tensorflow_datasets(
        kafka_config: KafkaConfig, tmp_path: Path) -> None:
    data_dir = tmp_path / "tensorflow_datasets"
    pixels = _build_tfds_pets(data_dir, tmp_path / "raw")
    assert list((data_dir / "oxford_iiit_pet").glob("*/oxford_iiit_pet-train.tfrecord*"))
    settings = make_settings(kafka_config, {"producer.source.kind": "tfds", "producer.source.path": str(data_dir),
                                              "producer.source.jpeg_quality": 95})

    summary = app.run(settings)

    assert (summary.sent, summary.eval_sent, summary.failed, summary.skipped) == (6, 2, 0, {})
    got = consume_all(kafka_config, settings.topics.train, 4) + consume_all(kafka_config, settings.topics.eval, 2)
    assert sorted(key for key, _ in got) == sorted(_TFDS_PETS)
    for key, value in got:
        record, _ = wire.decode(value)
        rgb, trimap = pixels[key]
        assert record.image_id == key
        assert record.split == _TFDS_PETS[key][0]
        assert record.source == "tfds:oxford_iiit_pet"
        # The mask survives tfds's PNG round trip exactly, as the 8-bit grayscale PNG the wire needs.
        assert record.mask[24:26] == b"\x08\x00"
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(record.mask))), trimap)
        # The image is re-encoded as JPEG twice (tfds, then the producer): same size, same picture.
        image = Image.open(io.BytesIO(record.image))
        assert (image.format, image.size) == ("JPEG", (rgb.shape[1], rgb.shape[0]))
        # Luminance: JPEG keeps it at full resolution, so the edges stay sharp there.
        error = np.abs(np.asarray(image.convert("L"), np.int16) - np.asarray(Image.fromarray(rgb).convert("L"))).mean()
        assert error < 2, (key, error)


def test_tfds_source_without_the_prepared_dataset_names_the_data_dir(tmp_path: Path) -> None:
    from producer.sources import open_source
    from stream_trainer.config import ProducerSourceConfig
    from stream_trainer.errors import ConfigError

    with pytest.raises(ConfigError, match=f"oxford_iiit_pet is not downloaded in {tmp_path}") as info:
        open_source(ProducerSourceConfig(kind="tfds", path=str(tmp_path)))
    assert "\n" not in str(info.value)


def test_palette_trimaps_are_sent_as_single_channel_png_with_the_same_values(tmp_path: Path) -> None:
    from producer.sources.directory import DirectorySource
    from stream_trainer.config import ProducerSourceConfig

    _write_pet_dir(tmp_path, ["Pug_1"])
    trimap_path = tmp_path / "annotations" / "trimaps" / "Pug_1.png"
    values = np.asarray(Image.open(trimap_path))
    palette = Image.fromarray(values, "P")
    palette.putpalette([0, 0, 0, 255, 255, 255, 128, 128, 128, 200, 0, 0])
    palette.save(trimap_path)

    (record,) = DirectorySource(ProducerSourceConfig(kind="dir", path=str(tmp_path))).iterate(0, False, True)

    assert isinstance(record, wire.PetRecord)
    mask = Image.open(io.BytesIO(record.mask))
    assert mask.mode == "L"
    assert np.array_equal(np.asarray(mask), values)


def test_phases_tag_train_and_eval_messages_and_switch_in_stream_order(kafka_config: KafkaConfig) -> None:
    # One partition, so the topic keeps the send order; eval_fraction 0.25: a = 6 train + 2 eval,
    # b = 3 train + 1 eval. Two passes: a, b, a, b in the train topic; every eval image once.
    phases = [{"name": "a", "images": 8},
              {"name": "b", "images": 4, "shape": "box", "pet_colour": "cool", "background": "warm-stripes"}]
    settings = make_settings(kafka_config, {"producer.source.phases": phases, "producer.source.eval_fraction": 0.25,
                                              "producer.passes": 2, "topics.partitions": 1})
    summary = app.run(settings)
    assert (summary.sent, summary.failed, summary.eval_sent) == (2 * 9 + 3, 0, 3)

    by_phase = {p.name: p for p in settings.producer.source.phases}
    train = [wire.decode(v)[0] for _, v in consume_all(kafka_config, settings.topics.train, 18)]
    evals = [wire.decode(v)[0] for _, v in consume_all(kafka_config, settings.topics.eval, 3)]
    assert [r.source for r in train] == (["synthetic:phase=a"] * 6 + ["synthetic:phase=b"] * 3) * 2
    assert sorted((r.source, r.image_id) for r in evals) == [
        ("synthetic:phase=a", "synthetic_a_000003"), ("synthetic:phase=a", "synthetic_a_000007"),
        ("synthetic:phase=b", "synthetic_b_000003")]
    assert {r.split for r in train} == {"train"} and {r.split for r in evals} == {"test"}
    for record in train + evals:
        index = int(record.image_id.rsplit("_", 1)[1])
        assert record == synthetic.make_record(index, min_size=64, max_size=96, eval_fraction=0.25,
                                               phase=by_phase[wire.phase_of(record.source)])
    # How a consumer picks one phase's eval set out of the shared eval topic.
    assert [r.image_id for r in evals if wire.phase_of(r.source) == "b"] == ["synthetic_b_000003"]
