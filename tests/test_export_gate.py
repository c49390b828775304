"""The export gate through the trainer: every export carries the eval score of the weights it holds,
and with ``export_policy: improved`` a worsened model (trained on inverted masks) is not exported
while a better one is. Periodic evaluation is off in these runs: the scores come from the gate."""

from __future__ import annotations

import dataclasses
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from confluent_kafka import Producer
from PIL import Image

from producer.sources.synthetic import generate
from stream_trainer import wire
from stream_trainer.app import run_trainer
from stream_trainer.config import Settings
from stream_trainer.kafka import Cluster
from stream_trainer.state.checkpoint import read_positions
from tests.pets import produce_pets, tiny_settings


def _inverted(mask_png: bytes) -> bytes:
    """The trimap with pet and background swapped: a label a model must not be rewarded for learning."""
    mask = np.asarray(Image.open(io.BytesIO(mask_png)))
    out = mask.copy()
    out[mask == wire.PET], out[mask == wire.BACKGROUND] = wire.BACKGROUND, wire.PET
    buf = io.BytesIO()
    Image.fromarray(out).save(buf, "PNG")
    return buf.getvalue()


def _produce_inverted(bootstrap: str, topic: str, count: int, seed: int) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for rec in generate(count, seed=seed, min_size=48, max_size=64, eval_fraction=0.0):
        bad = dataclasses.replace(rec, mask=_inverted(rec.mask))
        p.produce(topic, key=rec.image_id.encode(), value=wire.encode(bad, int(time.time() * 1000)))
    assert p.flush(30) == 0


def _run(base: Settings, topic: str, steps: int) -> Any:
    """A run of ``steps`` steps on ``topic``, restoring from and exporting into ``base``'s directories.

    Each run reads its own topic (a checkpoint of another topic restores weights and step, not
    offsets), so it trains on exactly one kind of data."""
    trainer = base.trainer
    trainer = dataclasses.replace(trainer, loop=dataclasses.replace(trainer.loop, max_steps=steps),
                                  source=dataclasses.replace(trainer.source, group_id=f"{topic}-group"))
    return run_trainer(dataclasses.replace(base, trainer=trainer,
                                           topics=dataclasses.replace(base.topics, train=topic)))


def _exports(settings: Settings) -> dict[int, dict[str, Any]]:
    root = Path(settings.trainer.checkpoint.export_dir)
    if not root.is_dir():
        return {}
    versions = sorted(int(p.name) for p in root.iterdir() if p.name.isdigit())
    return {v: json.loads((root / str(v) / "model.json").read_text()) for v in versions}


@pytest.fixture()
def dtype_policy_restored() -> Iterator[None]:
    """``run_trainer`` sets the global dtype policy: the tests after this one must not inherit it."""
    before = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(before)


def test_improved_declines_a_model_worsened_by_inverted_masks_and_exports_a_better_one(
        kafka_bootstrap: str, tmp_path: Path, dtype_policy_restored: None) -> None:
    name = f"gate-{tmp_path.name[-8:]}"
    good_a, inverted, good_c = f"{name}-a", f"{name}-inverted", f"{name}-c"
    settings = tiny_settings(kafka_bootstrap, tmp_path, good_a, trainer__checkpoint__export_policy="improved",
                             trainer__checkpoint__every_steps=100_000, trainer__replay__size_mib=0,
                             trainer__loop__eval_max_images=48)
    # Checkpoints only at the end of each run (no step interval), so each run offers one export.
    Cluster(settings.kafka).ensure_topics({good_a: 1, inverted: 1, good_c: 1, settings.topics.eval: 1})
    produce_pets(kafka_bootstrap, good_a, 8 * 40, seed=1, eval_topic=settings.topics.eval, eval_count=48)
    _produce_inverted(kafka_bootstrap, inverted, 8 * 40, seed=2)
    produce_pets(kafka_bootstrap, good_c, 8 * 160, seed=3)

    good = _run(settings, good_a, 40)
    exported = _exports(settings)
    assert list(exported) == [40], exported
    first = exported[40]["scores"]
    assert first is not None, "the export carries no score although the eval topic has data"
    assert first["mean_iou"] == good.last_eval.mean_iou and good.last_eval.step == 40
    print(f"good data, step 40: exported with mean IoU {first['mean_iou']:.3f}")

    worse = _run(settings, inverted, 40)
    print(f"inverted masks, step 80: mean IoU {worse.last_eval.mean_iou:.3f}")
    assert read_positions(settings.trainer.checkpoint.dir)[:2] == (80, inverted), "the checkpoint is written anyway"
    assert worse.last_eval.step == 80 and worse.last_eval.mean_iou < first["mean_iou"] - 0.05, \
        (worse.last_eval, first)
    assert list(_exports(settings)) == [40], "a model worsened by inverted masks was exported"

    better = _run(settings, good_c, 160)
    print(f"good data again, step 240: mean IoU {better.last_eval.mean_iou:.3f}")
    exported = _exports(settings)
    assert list(exported) == [40, 240], (exported, better.last_eval)
    assert exported[240]["scores"]["mean_iou"] == better.last_eval.mean_iou > first["mean_iou"]
