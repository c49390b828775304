"""Pure parts, no broker: the offset tracker, the decode path (eagerly and inside tf.data),
poison classification and configuration errors."""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorflow.core.example import example_pb2

from producer.sources.synthetic import make_record
from stream_trainer import config, wire
from stream_trainer.errors import ConfigError
from stream_trainer.ingest import pipeline
from stream_trainer.quality import poison
from stream_trainer.quality.evaluate import scores
from stream_trainer.state.progress import OffsetTracker
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


# -- poison classification ----------------------------------------------------------------------


@pytest.mark.parametrize("reason", list(poison_messages()))
def test_each_malformed_message_is_classified_by_its_reason(reason: str) -> None:
    assert poison.classify(poison_messages()[reason]).reason == reason


def test_empty_and_null_values_are_classified_empty() -> None:
    assert poison.classify(b"").reason == "empty"
    assert poison.classify(None).reason == "empty"


def test_a_good_message_is_not_classified_as_a_known_fault() -> None:
    assert poison.classify(_value()).reason == "unknown"


def _png(array: np.ndarray, palette: list[int] | None = None) -> bytes:
    img = Image.fromarray(array)
    if palette is not None:
        img = Image.fromarray(array, "P")
        img.putpalette(palette)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def _jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "JPEG")
    return buf.getvalue()


_TRIMAP = np.full((40, 40), wire.BACKGROUND, np.uint8)
_TRIMAP[10:30, 10:30] = wire.BORDER
_TRIMAP[12:28, 12:28] = wire.PET
_IMAGE = _jpeg(np.full((40, 40, 3), 120, np.uint8))
# What Java's ImageIO writes for a TYPE_BYTE_INDEXED image: the class values are palette indices.
_COLOURS = [0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255]
# The same indices with gray palette entries 1, 2, 3: decode_png's luminance happens to be the class.
_GRAYS = [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]


def _example(mask: bytes = b"", **features: Any) -> bytes:
    """A version-1 Example built with the raw protobuf API; ``features`` replace or add fields.

    A feature's value is a list of ints or bytes, ``(list kind, values)`` for an explicit (maybe
    empty) list, or None to leave the feature out.
    """
    ex = example_pb2.Example()
    fields: dict[str, Any] = {wire.VERSION_KEY: [1], wire.IMAGE_KEY: [_IMAGE],
                              wire.MASK_KEY: [mask or _png(_TRIMAP)]}
    fields.update({k.replace("__", "/"): v for k, v in features.items()})
    for key, values in fields.items():
        if values is None:
            continue
        feature = ex.features.feature[key]
        if isinstance(values, tuple):
            kind, values = values
            getattr(feature, kind).SetInParent()
            getattr(feature, kind).value.extend(values)
        else:
            for v in values:
                (feature.int64_list if isinstance(v, int) else feature.bytes_list).value.append(v)
    return bytes(ex.SerializeToString())


MASK_FORMATS = {
    "palette_colours": (_png(_TRIMAP, _COLOURS), "palette-indexed (colour type 3"),
    "palette_grays": (_png(_TRIMAP, _GRAYS), "palette-indexed (colour type 3"),
    "gray_16_bit": (_png(_TRIMAP.astype(np.uint16) * 257), "16-bit grayscale (bit depth 16, colour type 0)"),
    "gray_alpha": (_png(np.stack([_TRIMAP, np.full_like(_TRIMAP, 255)], -1)),
                   "8-bit grayscale with alpha (bit depth 8, colour type 4)"),
    "rgb": (_png(np.repeat(_TRIMAP[..., None], 3, -1)), "8-bit RGB (bit depth 8, colour type 2)"),
}


@pytest.mark.parametrize("name", list(MASK_FORMATS))
def test_a_mask_png_that_is_not_8_bit_grayscale_is_mask_format(name: str) -> None:
    mask, found = MASK_FORMATS[name]
    verdict = poison.classify(_example(mask))
    assert verdict.reason == "mask_format", verdict
    assert f"mask PNG is {found}" in verdict.detail
    assert "the contract needs 8-bit grayscale (bit depth 8, colour type 0)" in verdict.detail


def test_an_8_bit_grayscale_mask_with_the_class_values_is_not_mask_format() -> None:
    assert poison.classify(_example(_png(_TRIMAP))).reason == "unknown"


def test_mask_format_is_read_from_the_png_header() -> None:
    mask = bytearray(_png(_TRIMAP))
    assert mask[:8] == poison.PNG_SIGNATURE and mask[12:16] == b"IHDR"
    assert (mask[24], mask[25]) == (8, 0)


@pytest.mark.parametrize(("features", "detail"), [
    ({"image__encoded": [5]}, "feature 'image/encoded' must hold exactly one bytes value; found an int64 list"),
    ({"image__encoded": [_IMAGE, _IMAGE]},
     "feature 'image/encoded' must hold exactly one bytes value; found 2 bytes values"),
    ({"mask__encoded": ("bytes_list", [])},
     "feature 'mask/encoded' must hold exactly one bytes value; found 0 bytes values"),
    ({"format_version": [b"1"]}, "feature 'format_version' must hold exactly one int64 value; found a bytes list"),
    ({"format_version": ("float_list", [1.0])},
     "feature 'format_version' must hold exactly one int64 value; found a float list"),
    ({"produce_ts_ms": [b"now"]}, "optional feature 'produce_ts_ms', when present, must hold exactly one int64 value; "
                                  "found a bytes list"),
    ({"produce_ts_ms": [1, 2]}, "optional feature 'produce_ts_ms', when present, must hold exactly one int64 value; "
                                "found 2 int64 values"),
])
def test_a_field_of_the_wrong_type_or_count_is_field_type(features: dict[str, Any], detail: str) -> None:
    value = _example(**features)
    verdict = poison.classify(value)
    assert verdict == poison.Verdict("field_type", detail)
    with pytest.raises(tf.errors.InvalidArgumentError):  # the trainer rejects it too
        pipeline.decode_example(tf.constant(value), 16)


def test_only_an_absent_required_field_is_missing_field() -> None:
    verdict = poison.classify(_example(image__encoded=None))
    assert verdict == poison.Verdict("missing_field",
                                     "required feature 'image/encoded' (bytes_list with one value) is missing")
    # A feature entry without any list is what TensorFlow's parser also treats as absent.
    ex = example_pb2.Example.FromString(_example())
    ex.features.feature[wire.MASK_KEY].Clear()
    assert poison.classify(ex.SerializeToString()).reason == "missing_field"
    # Optional features may be absent, or present without a list.
    ex.features.feature[wire.MASK_KEY].bytes_list.value.append(_png(_TRIMAP))
    ex.features.feature[wire.PRODUCE_TS_KEY].Clear()
    assert poison.classify(ex.SerializeToString()).reason == "unknown"


def test_a_mask_that_is_not_a_png_file_is_mask_decode() -> None:
    verdict = poison.classify(_example(_jpeg(np.repeat(_TRIMAP[..., None], 3, -1))))
    assert verdict == poison.Verdict("mask_decode",
                                     "mask is not a PNG file (it is a JPEG file); the contract needs a PNG")
    truncated = poison.classify(_example(_png(_TRIMAP)[:60]))
    assert truncated.reason == "mask_decode" and "PNG (60 bytes) that does not decode" in truncated.detail


def test_details_are_sentences_without_tensorflow_internals() -> None:
    values = {**poison_messages(), "unknown_format": _example(image__encoded=[b"RIFF nope " * 5]),
              "png_image": _example(image__encoded=[_png(np.zeros((40, 40, 3), np.uint8))[:70]]),
              **{f"mask_format_{k}": _example(m) for k, (m, _) in MASK_FORMATS.items()}}
    for name, value in values.items():
        detail = poison.classify(value).detail
        assert detail and len(detail) <= poison.DETAIL_MAX_CHARS, (name, detail)
        assert not re.search(r"\{\{|function_node|__wrapped__|\[Op:|Traceback|device:CPU|\n", detail), (name, detail)
    assert poison.classify(poison_messages()["image_decode"]).detail == (
        "image looks like a JPEG (220 bytes) but does not decode, probably truncated or corrupt "
        "(Invalid JPEG data, size 220)")
    assert poison.classify(values["unknown_format"]).detail == (
        "image is not a JPEG, PNG, GIF or BMP file (it starts with bytes 52 49 46 46)")


def test_a_long_detail_is_cut_to_the_limit() -> None:
    detail = poison._verdict("unknown", "x" * 1000).detail
    assert len(detail) == poison.DETAIL_MAX_CHARS and detail.endswith("...")


def test_every_reason_is_reachable_and_listed_in_order() -> None:
    assert poison.REASONS == ("empty", "parse", "missing_field", "field_type", "version", "image_decode",
                              "mask_decode", "mask_format", "shape_mismatch", "mask_values", "too_large", "unknown")
    too_large = _example(poison.PNG_SIGNATURE + b"\0\0\0\rIHDR" + bytes.fromhex("00ffffff" * 2))
    seen = {poison.classify(v).reason for v in [b"", _value(), _example(image__encoded=[5]), too_large,
                                                 *poison_messages().values(), _example(MASK_FORMATS["rgb"][0])]}
    assert seen == set(poison.REASONS)


def test_poison_checks_the_features_the_pipeline_parses() -> None:
    parsed = {key: (spec.dtype, spec.default_value is None) for key, spec in pipeline._FEATURES.items()}
    kinds = {"int64_list": tf.int64, "bytes_list": tf.string}
    assert {key: (kinds[kind], required) for key, kind, required in poison.FEATURES} == parsed


@pytest.mark.parametrize("name", list(MASK_FORMATS))
def test_the_pipeline_rejects_every_mask_poison_calls_mask_format(name: str) -> None:
    with pytest.raises(tf.errors.InvalidArgumentError):
        pipeline.decode_example(tf.constant(_example(MASK_FORMATS[name][0])), 16)


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
    with pytest.raises(ConfigError, match=r"trainer\.cluster\.index' must be in \[0, 2\)"):
        config.load(None, {"trainer.cluster.workers": ["a:1", "b:2"], "trainer.cluster.index": 2})


def test_a_moved_key_says_where_it_went() -> None:
    with pytest.raises(ConfigError, match=r"'trainer\.source\.worker_index' has moved to trainer\.cluster\.index"):
        config.load(None, {"trainer.source.worker_index": 1})


def test_shipped_configs_load() -> None:
    root = Path(__file__).resolve().parents[1] / "configs"
    for name in ("trainer.yaml", "producer.yaml", "demo.yaml", "docker.yaml"):
        config.load(root / name)


def test_librdkafka_reconnect_chatter_is_dropped_but_security_errors_pass() -> None:
    import logging

    from stream_trainer.kafka import RDKAFKA_LOG

    def passes(text: str) -> bool:
        record = logging.LogRecord("librdkafka", logging.ERROR, __file__, 1, text, None, None)
        return all(f.filter(record) for f in RDKAFKA_LOG.filters)

    assert not passes("FAIL [thrd:127.0.0.1:9092/bootstrap]: Connect to ipv4#127.0.0.1:9092 failed: Connection refused")
    assert not passes("1/1 brokers are down")
    assert passes("FAIL [thrd:sasl_ssl://b:9093/bootstrap]: SASL authentication error: Authentication failed")
    assert passes("FAIL [thrd:ssl://b:9093/bootstrap]: SSL handshake failed: certificate verify failed")
    assert passes("CONFWARN [thrd:app]: Configuration property group.id is a consumer property")
