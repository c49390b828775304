"""TensorBoard's event files without a broker: secrets stay out, only the chief writes, and a
failing disk is one warning while training goes on (stream_trainer/loop/tensorboard.py).

What a real run writes (every scalar, the pictures, eval IoU rising) is read back in
tests/test_trainer.py, on the shared training run.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util.tensor_util import make_ndarray

from stream_trainer.config import load
from stream_trainer.loop import tensorboard as tb
from stream_trainer.loop.status import Reading


def _reading(step: int) -> Reading:
    return Reading(step, 2.0, 30.0, 10.0, 0.5, (0.6, 0.4), (0.5, 0.5), 12, 0.25, 0)


def test_the_config_text_has_no_secret_and_names_every_section(tmp_path: Path) -> None:
    settings = load(None, {"kafka.client": {"security.protocol": "sasl_ssl", "sasl.mechanism": "PLAIN",
                                            "sasl.username": "trainer", "sasl.password": "hunter2-s3cret"},
                           "trainer.loop.tensorboard_dir": str(tmp_path)})
    board = tb.for_worker(settings, True, keras.optimizers.Adam(learning_rate=0.003))
    assert board is not None
    board.started(7, settings)
    board.reading(_reading(8))
    board.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    events.Reload()
    config = make_ndarray(events.Tensors(tb.CONFIG)[0].tensor_proto).item().decode()
    assert "hunter2-s3cret" not in config and "sasl.password: ***\n" in config, config
    assert "sasl.username: trainer" in config and "tensorboard_dir:" in config
    lr = events.Tensors(tb.LEARNING_RATE)
    assert [e.step for e in lr] == [8] and float(make_ndarray(lr[0].tensor_proto)) == pytest.approx(0.003)


def test_only_the_chief_writes(tmp_path: Path) -> None:
    settings = load(None, {"trainer.loop.tensorboard_dir": str(tmp_path / "tb")})
    assert tb.for_worker(settings, False, keras.optimizers.Adam()) is None
    assert not (tmp_path / "tb").exists()
    off = load(None, {"trainer.loop.tensorboard_dir": ""})
    assert tb.for_worker(off, True, keras.optimizers.Adam()) is None


def test_a_directory_it_cannot_write_is_one_warning_and_no_exception(tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("in the way\n")  # what a vanished or unwritable disk looks like to the writer: an error
    with caplog.at_level(logging.WARNING, logger="stream_trainer.loop.tensorboard"):
        board = tb.Board(str(blocker / "tb"), lambda: 0.001)
        for step in range(3):
            board.reading(_reading(step))
        board.flush()
        board.close()
    warnings = [r.getMessage() for r in caplog.records if r.name == "stream_trainer.loop.tensorboard"]
    assert not board.writing
    assert len(warnings) == 1 and "training goes on" in warnings[0] and str(blocker) in warnings[0], warnings


def test_scores_go_in_at_every_evaluation_pictures_at_most_every_images_every_s(tmp_path: Path) -> None:
    import numpy as np

    from stream_trainer.quality.evaluate import EvalResult, Pictures

    now = [0.0]
    board = tb.Board(str(tmp_path), lambda: 0.001, images_every_s=600, clock=lambda: now[0])
    pictures = Pictures(np.zeros((2, 8, 8, 3), np.uint8), np.zeros((2, 8, 8), np.uint8), np.ones((2, 8, 8), np.uint8))
    for step, t in [(0, 0.0), (50, 100.0), (100, 700.0), (100, 800.0), (150, 1000.0)]:
        now[0] = t
        board.evaluation(EvalResult(step, step / 1000, 0.5, 2, None, pictures))
    board.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"tensors": 0})
    events.Reload()
    assert [e.step for e in events.Tensors(tb.EVAL_IOU)] == [0, 50, 100, 150]  # step 100 asked twice, written once
    assert [e.step for e in events.Tensors(tb.SNAPSHOT)] == [0, 100]
    width, height, *pngs = make_ndarray(events.Tensors(tb.SNAPSHOT)[0].tensor_proto)
    assert (int(width), int(height), len(pngs)) == (3 * 8 + 4, 8, 2)


def test_docs_list_exactly_the_tags_written() -> None:
    import re

    text = (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text()
    section = text.split("\n## TensorBoard\n", 1)[1].split("\n## ", 1)[0]
    documented = re.findall(r"^\| `([\w/]+)` \|", section, re.MULTILINE)
    assert documented == [*tb.SCALARS, tb.SNAPSHOT, tb.CONFIG, tb.VERSIONS], documented
