"""Versioned exports: TF Serving layout, keep-K pruning, the improved policy, serving signatures,
and an export that fails half-way leaving the served versions alone."""

from __future__ import annotations

import errno
import gc
import io
import json
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from producer.sources.synthetic import make_record
from stream_trainer.config import CheckpointConfig, ModelConfig
from stream_trainer.errors import CheckpointError
from stream_trainer.ingest import pipeline
from stream_trainer.learn import precision
from stream_trainer.learn.model import build_unet
from stream_trainer.serve.export import SIGNATURE_BYTES, SIGNATURE_PIXELS, Exporter

SIZE = 32
META = {"topic": "pets", "next_offsets": {"0": 42}}


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(0)
    return build_unet(SIZE, ModelConfig(base_filters=4, depth=2))


def exporter(tmp_path: Path, **cfg: Any) -> Exporter:
    return Exporter(replace(CheckpointConfig(export_dir=str(tmp_path / "export")), **cfg), SIZE)


def iou(value: float) -> dict[str, float]:
    return {"mean_iou": value, "pixel_accuracy": 0.9}


# -- layout and policy ---------------------------------------------------------------------------


def test_each_export_is_a_numbered_version_with_saved_model_keras_file_and_metadata(
        tmp_path: Path, model: keras.Model) -> None:
    ex = exporter(tmp_path)
    first = ex.export(model, 200, iou(0.5), META)
    second = ex.export(model, 400, iou(0.6), META)
    root = tmp_path / "export"
    assert first == root / "200" and second == root / "400"
    assert ex.versions() == [200, 400]
    for version in (first, second):
        assert (version / "saved_model.pb").is_file() and (version / "variables").is_dir()
        assert (version / "model.keras").is_file()
    meta = json.loads((root / "400" / "model.json").read_text())
    assert meta["step"] == 400 and meta["version"] == 400
    assert meta["scores"] == iou(0.6)
    assert meta["topic"] == "pets" and meta["next_offsets"] == {"0": 42} and meta["precision"] == "float32"
    assert {SIGNATURE_BYTES, SIGNATURE_PIXELS} <= set(meta["signatures"])
    assert os.readlink(root / "latest") == "400"  # relative: the directory can be moved
    assert sorted(p.name for p in root.iterdir()) == ["200", "400", "latest"]  # no temp dirs left


def test_only_the_newest_export_keep_versions_stay(tmp_path: Path, model: keras.Model) -> None:
    ex = exporter(tmp_path, export_keep=2)
    for step in (10, 20, 30):
        ex.export(model, step, None, META)
    assert ex.versions() == [20, 30]
    assert os.readlink(tmp_path / "export" / "latest") == "30"


def test_a_step_below_the_newest_version_still_exports_as_a_newer_version(tmp_path: Path,
                                                                          model: keras.Model) -> None:
    # A restart from an older checkpoint must not publish a version TF Serving considers old.
    exporter(tmp_path).export(model, 500, None, META)
    path = exporter(tmp_path).export(model, 300, None, META)
    assert path == tmp_path / "export" / "501"
    assert json.loads((path / "model.json").read_text())["step"] == 300


def test_improved_declines_a_worse_model_and_accepts_one_within_tolerance(
        tmp_path: Path, model: keras.Model, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="stream_trainer.serve.export")
    ex = exporter(tmp_path, export_policy="improved", export_tolerance=0.02)
    assert ex.export(model, 100, iou(0.60), META) is not None  # the first one always
    assert ex.export(model, 200, iou(0.57), META) is None  # 0.03 worse
    assert "0.5700 vs last exported 0.6000" in caplog.text and "not exported" in caplog.text
    assert ex.export(model, 300, iou(0.585), META) == tmp_path / "export" / "300"  # 0.015 worse: within
    # The bar is now the last exported 0.585, not the best 0.60.
    assert ex.export(model, 400, iou(0.566), META) == tmp_path / "export" / "400"
    assert ex.versions() == [100, 300, 400]


def test_improved_without_scores_exports_and_says_it_could_not_compare(
        tmp_path: Path, model: keras.Model, caplog: pytest.LogCaptureFixture) -> None:
    ex = exporter(tmp_path, export_policy="improved")
    ex.export(model, 100, iou(0.6), META)
    assert ex.export(model, 200, None, META) is not None
    assert "cannot compare" in caplog.text
    # A version exported without scores cannot be compared with either.
    assert ex.export(model, 300, iou(0.1), META) is not None


def test_the_same_step_is_exported_once(tmp_path: Path, model: keras.Model) -> None:
    ex = exporter(tmp_path)
    ex.export(model, 100, None, META)
    assert ex.export(model, 100, None, {**META, "next_offsets": {"0": 50}}) is None
    assert ex.versions() == [100]


def test_an_export_leaves_no_traced_graphs_waiting_for_the_garbage_collector(tmp_path: Path,
                                                                            model: keras.Model) -> None:
    """Tracing an export leaves its graphs in reference cycles; a daemon whose collector gets to
    them hours later carries them into every training step (docs/benchmarks.md, memory)."""
    ex = exporter(tmp_path)
    gc.collect()
    gc.disable()  # only the export's own collection may free them
    try:
        ex.export(model, 100, None, META)
        left = gc.collect()
    finally:
        gc.enable()
    assert left < 100, f"{left} objects in reference cycles after the export"


# -- serving -------------------------------------------------------------------------------------


def jpeg_and_png() -> tuple[bytes, bytes]:
    """A 70x90 JPEG (shrunk by area) and a 20x24 PNG (enlarged by bilinear) from the producer."""
    jpeg = make_record(1, seed=4, min_size=70, max_size=90).image
    rgb = np.asarray(Image.open(io.BytesIO(make_record(2, seed=4, min_size=20, max_size=24).image)).convert("RGB"))
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return jpeg, buf.getvalue()


@pytest.fixture()
def bfloat16_model() -> Iterator[keras.Model]:
    precision.apply("mixed_bfloat16")
    try:
        keras.utils.set_random_seed(1)
        yield build_unet(SIZE, ModelConfig(base_filters=4, depth=2))
    finally:
        keras.config.set_dtype_policy("float32")


def test_the_newest_saved_model_segments_encoded_images_and_pixels_like_the_trained_model(
        tmp_path: Path, bfloat16_model: keras.Model) -> None:
    ex = exporter(tmp_path)
    ex.export(bfloat16_model, 10, None, META)
    ex.export(bfloat16_model, 20, None, META)
    newest = tmp_path / "export" / str(max(ex.versions()))
    assert json.loads((newest / "model.json").read_text())["precision"] == "mixed_bfloat16"
    served = tf.saved_model.load(str(newest))
    assert set(served.signatures) == {SIGNATURE_BYTES, SIGNATURE_PIXELS}

    jpeg, png = jpeg_and_png()
    out = served.signatures[SIGNATURE_BYTES](image_bytes=tf.constant([jpeg, png]))
    assert out["classes"].dtype == tf.int64 and out["classes"].shape == (2, SIZE, SIZE)
    assert out["trimap"].dtype == tf.uint8 and out["trimap"].shape == (2, SIZE, SIZE)
    np.testing.assert_array_equal(out["trimap"].numpy(), out["classes"].numpy() + 1)
    assert set(np.unique(out["classes"].numpy())) <= {0, 1, 2}

    # The same pixels the trainer would have decoded, through the float signature and through Keras.
    pixels = tf.cast(tf.stack([pipeline.decode_image(tf.constant(b), SIZE) for b in (jpeg, png)]), tf.float32) / 255
    by_pixels = served.signatures[SIGNATURE_PIXELS](images=pixels)
    assert by_pixels["classes"].dtype == tf.int64 and by_pixels["classes"].shape == (2, SIZE, SIZE)
    keras_classes = np.argmax(bfloat16_model(pixels, training=False).numpy(), axis=-1)
    # Graph and eager bfloat16 kernels may round differently; a pixel or two at a near-tie may flip.
    assert np.mean(by_pixels["classes"].numpy() == keras_classes) > 0.99
    assert np.mean(out["classes"].numpy() == by_pixels["classes"].numpy()) > 0.99
    # The Keras file holds the same weights.
    reloaded = keras.saving.load_model(newest / "model.keras")
    np.testing.assert_array_equal(reloaded.get_layer("logits").get_weights()[0],
                                  bfloat16_model.get_layer("logits").get_weights()[0])


# -- failures ------------------------------------------------------------------------------------


def test_an_export_failing_half_way_leaves_the_previous_versions_and_latest_intact(
        tmp_path: Path, model: keras.Model, monkeypatch: pytest.MonkeyPatch) -> None:
    ex = exporter(tmp_path)
    ex.export(model, 100, None, META)
    root = tmp_path / "export"
    before = sorted((p.relative_to(root), p.stat().st_size) for p in (root / "100").rglob("*"))

    during: list[list[int]] = []

    def disk_full(self: keras.Model, path: str | Path, **_: Any) -> None:
        Path(path).write_bytes(b"PK\x03\x04 half a zip")
        # Were the process killed right now, TF Serving must not find a half-written version.
        during.append(ex.versions())
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(keras.Model, "save", disk_full)
    with pytest.raises(CheckpointError, match=r"exporting step 200 .* failed: .*No space left"):
        ex.export(model, 200, None, META)
    assert during == [[100]]
    assert sorted(p.name for p in root.iterdir()) == ["100", "latest"]  # nothing half-written left
    assert os.readlink(root / "latest") == "100"
    assert sorted((p.relative_to(root), p.stat().st_size) for p in (root / "100").rglob("*")) == before
    monkeypatch.undo()
    assert ex.export(model, 200, None, META) == root / "200"  # and the next try works


def test_an_export_whose_final_rename_fails_raises_checkpoint_error(tmp_path: Path, model: keras.Model) -> None:
    ex = exporter(tmp_path)
    ex.export(model, 100, None, META)
    (tmp_path / "export" / "200").write_text("a file where the version directory must go")
    with pytest.raises(CheckpointError, match="exporting step 200"):
        ex.export(model, 200, None, META)
    assert ex.versions() == [100]
    assert not list((tmp_path / "export").glob(".export-*"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_an_unwritable_export_dir_raises_checkpoint_error_and_keeps_the_versions(
        tmp_path: Path, model: keras.Model) -> None:
    ex = exporter(tmp_path)
    ex.export(model, 100, None, META)
    root = tmp_path / "export"
    root.chmod(0o555)
    try:
        with pytest.raises(CheckpointError, match="exporting step 200"):
            ex.export(model, 200, None, META)
    finally:
        root.chmod(0o755)
    assert ex.versions() == [100]


def test_an_export_dir_that_is_a_file_raises_checkpoint_error(tmp_path: Path, model: keras.Model) -> None:
    (tmp_path / "export").write_text("not a directory")
    with pytest.raises(CheckpointError, match="cannot use export directory"):
        exporter(tmp_path).export(model, 1, None, META)
