"""Pure parts, no broker: the offset tracker, the decode path (eagerly and inside tf.data),
poison classification and configuration errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from producer.sources.synthetic import make_record
from stream_trainer import config, pipeline, poison, wire
from stream_trainer.errors import ConfigError
from stream_trainer.evaluate import scores
from stream_trainer.progress import OffsetTracker
from tests.test_trainer import poison_messages

# -- offset tracker -----------------------------------------------------------------------------


def test_position_advances_only_over_an_unbroken_chain_of_trained_offsets() -> None:
    t = OffsetTracker({0: 10})
    t.handled(0, 11, 12)  # trained out of order (shuffle window)
    assert t.positions() == {0: 10}
    t.handled(0, 9, 10)
    assert t.positions() == {0: 11}
    t.handled(0, 10, 11)
    assert t.positions() == {0: 13}


def test_a_dead_lettered_hole_counts_as_handled_once_its_link_lands() -> None:
    t = OffsetTracker({0: 0, 1: 5})
    t.handled(0, -1, 0)
    # Offsets 1 and 2 were malformed: the next survivor links 0 -> 3 (after dead-lettering).
    t.handled(0, 0, 3)
    assert t.positions() == {0: 4, 1: 5}


def test_duplicates_after_a_restart_are_ignored_and_leave_nothing_behind() -> None:
    t = OffsetTracker({0: 0})
    for o in range(5):
        t.handled(0, o - 1, o)
    t.handled(0, 1, 2)
    assert t.positions() == {0: 5} and t.pending() == 0


# -- decode path --------------------------------------------------------------------------------


def _value(index: int = 0, size: int = 70) -> bytes:
    return wire.encode(make_record(index, seed=3, min_size=size, max_size=size + 20), 1234)


def test_decode_example_resizes_and_maps_trimap_values_to_classes_eagerly() -> None:
    out = pipeline.decode_example(tf.constant(_value()), 32)
    assert out["image"].shape == (32, 32, 3) and out["image"].dtype == tf.uint8
    assert out["mask"].shape == (32, 32, 1)
    assert set(np.unique(out["mask"].numpy())) <= {0, 1, 2}
    assert int(out["produce_ts_ms"]) == 1234


def test_decode_inside_tf_data_drops_malformed_messages_and_links_survivors() -> None:
    bad = list(poison_messages().values())
    values = [_value(0), bad[0], bad[3], _value(1), b"", _value(2)]
    raw = tf.data.Dataset.from_tensor_slices({
        "key": tf.constant([b""] * len(values)), "value": tf.constant(values),
        "partition": tf.zeros(len(values), tf.int32), "offset": tf.range(100, 100 + len(values), dtype=tf.int64)})
    got = [(int(e["prev"]), int(e["offset"])) for e in pipeline.decode_stream(raw, tf.constant(100, tf.int64), 32)]
    assert got == [(99, 100), (100, 103), (103, 105)]


def test_random_flip_moves_image_and_mask_together() -> None:
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, :4] = 255  # left half bright
    mask = np.zeros((8, 8, 1), np.uint8)
    mask[:, :4] = 2  # left half border class
    elem = {"image": tf.constant(image), "mask": tf.constant(mask)}
    for _ in range(20):
        out = pipeline._random_flip(elem)  # noqa: SLF001 - the augmentation op itself
        bright = out["image"].numpy()[:, :, 0] == 255
        assert np.array_equal(bright, out["mask"].numpy()[:, :, 0] == 2)


def test_train_batches_have_fixed_shapes_and_normalised_images() -> None:
    values = [_value(i) for i in range(10)]
    raw = tf.data.Dataset.from_tensor_slices({
        "key": tf.constant([b""] * 10), "value": tf.constant(values),
        "partition": tf.zeros(10, tf.int32), "offset": tf.range(10, dtype=tf.int64)})
    cfg = config.PipelineConfig(image_size=32, batch_size=4, shuffle_buffer=4)
    batches = list(pipeline.train_batches(pipeline.decode_stream(raw, tf.constant(0, tf.int64), 32), cfg))
    assert len(batches) == 2  # drop_remainder: static shapes for the compiled step
    b = batches[0]
    assert b["image"].shape == (4, 32, 32, 3) and b["image"].dtype == tf.float32
    assert 0.0 <= float(tf.reduce_min(b["image"])) and float(tf.reduce_max(b["image"])) <= 1.0


# -- poison classification ----------------------------------------------------------------------


@pytest.mark.parametrize("reason", list(poison_messages()))
def test_each_malformed_message_is_classified_by_its_reason(reason: str) -> None:
    assert poison.classify(poison_messages()[reason]).reason == reason


def test_empty_and_null_values_are_classified_empty() -> None:
    assert poison.classify(b"").reason == "empty"
    assert poison.classify(None).reason == "empty"


def test_a_good_message_is_not_classified_as_a_known_fault() -> None:
    assert poison.classify(_value()).reason == "unknown"


def test_grayscale_png_images_are_accepted() -> None:
    buf = io.BytesIO()
    Image.fromarray(np.full((30, 30), 99, np.uint8)).save(buf, "PNG")
    mbuf = io.BytesIO()
    Image.fromarray(np.full((30, 30), 1, np.uint8)).save(mbuf, "PNG")
    value = wire.encode(wire.PetRecord("g", buf.getvalue(), mbuf.getvalue()), 0)
    assert pipeline.decode_example(tf.constant(value), 16)["image"].shape == (16, 16, 3)


# -- evaluation scores --------------------------------------------------------------------------


def test_mean_iou_and_pixel_accuracy_from_a_confusion_matrix() -> None:
    cm = np.array([[8, 2, 0], [0, 10, 0], [0, 0, 0]])
    miou, acc = scores(cm)
    assert acc == pytest.approx(18 / 20)
    assert miou == pytest.approx((8 / 10 + 10 / 12) / 2)  # class 2 absent: not averaged in


# -- configuration ------------------------------------------------------------------------------


def test_unknown_nested_key_is_named_with_its_full_path(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("trainer:\n  pipeline:\n    batchsize: 8\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'trainer\.pipeline\.batchsize'"):
        config.load(f)


def test_wrong_type_is_named(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("trainer:\n  loop:\n    max_steps: lots\n")
    with pytest.raises(ConfigError, match=r"'trainer\.loop\.max_steps' must be int, got 'lots'"):
        config.load(f)


def test_environment_variables_are_expanded_and_missing_ones_named(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("kafka:\n  client:\n    sasl.password: ${SECRET}\n  bootstrap_servers: ${BROKER:-b:1}\n")
    monkeypatch.setenv("SECRET", "s3cret")
    s = config.load(f)
    assert s.kafka.client == {"sasl.password": "s3cret"} and s.kafka.bootstrap_servers == "b:1"
    monkeypatch.delenv("SECRET")
    with pytest.raises(ConfigError, match=r"'kafka\.client\.sasl\.password' uses \$\{SECRET\}"):
        config.load(f)


def test_cross_field_rules_name_the_key() -> None:
    with pytest.raises(ConfigError, match="trainer.source.worker_index"):
        config.load(None, {"trainer.source.worker_count": 2, "trainer.source.worker_index": 2})


def test_shipped_configs_load() -> None:
    root = Path(__file__).resolve().parents[1] / "configs"
    for name in ("trainer.yaml", "producer.yaml", "demo.yaml", "docker.yaml"):
        config.load(root / name)
