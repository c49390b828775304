"""Evaluation on the held-out eval topic: mean IoU, pixel accuracy and a snapshot picture.

The eval topic is small and fixed, so it is read once, bounded (low to high watermark at the
time of reading), decoded by the same code as training, and kept in memory. Malformed eval
messages are counted and dead-lettered like training ones, not skipped silently.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np
import numpy.typing as npt
import tensorflow as tf

from stream_trainer.ingest import pipeline
from stream_trainer.kafka import Cluster
from stream_trainer.kafka.cluster import offset_of
from stream_trainer.wire import NUM_CLASSES

log = logging.getLogger(__name__)
Array = npt.NDArray[Any]
KEEP_SNAPSHOTS = 20
# Trimap classes (wire.py: class = trimap value - 1): pet, background, border.
PALETTE = np.array([[255, 160, 30], [40, 50, 110], [250, 250, 250]], np.uint8)
GAP_PX = 2


@dataclass(frozen=True)
class Pictures:
    """A few eval examples and the model's answer: uint8 images [k, h, w, 3], classes [k, h, w]."""

    image: Array
    truth: Array
    predicted: Array


@dataclass(frozen=True)
class EvalResult:
    step: int
    mean_iou: float
    pixel_accuracy: float
    images: int
    snapshot: Path | None
    # Drawn into the snapshot PNG and TensorBoard's images; a few small arrays, kept for the last
    # evaluation only (RunSummary keeps three results, never one per evaluation).
    pictures: Pictures | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class EvalMessage:
    partition: int
    offset: int
    value: bytes


def read_eval_messages(cluster: Cluster, topic: str, max_images: int, wait_s: float) -> list[EvalMessage]:
    """Up to ``max_images`` raw messages from the eval topic, waiting up to ``wait_s`` for any."""
    deadline = time.monotonic() + wait_s
    while True:
        partitions = cluster.partitions(topic)
        marks = cluster.watermarks(topic, partitions)
        if any(m.high > m.low for m in marks.values()) or time.monotonic() >= deadline:
            break
        time.sleep(0.5)
    out: list[EvalMessage] = []
    for p, m in marks.items():
        end = min(m.high, m.low + max_images - len(out))
        out += [EvalMessage(p, offset_of(msg), msg.value() or b"") for msg in cluster.read_range(topic, p, m.low, end)]
        if len(out) >= max_images:
            break
    return out


Classify = Callable[[tf.Tensor], tf.Tensor]


def classifier(model: keras.Model) -> Classify:
    """The model's class per pixel for a batch of uint8 images, traced once for every batch size.

    Called eagerly, a Keras model runs layer by layer, each output a tensor of its own, and the
    process kept what that took: a first evaluation of 16 batches of 16 x 128 px images raised RSS
    by 279 MiB eagerly, 60 MiB traced, in a process that had just built the model
    (tests/test_evaluate.py).
    """
    spec = tf.TensorSpec([None, *model.input_shape[1:]], tf.uint8)

    def classify(image: tf.Tensor) -> tf.Tensor:
        return tf.argmax(model(tf.cast(image, tf.float32) / 255.0, training=False), axis=-1)

    traced: Classify = tf.function(classify, input_signature=[spec])
    return traced


def confusion(classify: Classify, batches: list[dict[str, tf.Tensor]]) -> tuple[Array, int]:
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    n = 0
    for batch in batches:
        pred = classify(batch["image"])
        cm += tf.math.confusion_matrix(tf.reshape(batch["mask"], [-1]), tf.reshape(pred, [-1]),
                                       num_classes=NUM_CLASSES, dtype=tf.int64).numpy()
        n += int(batch["image"].shape[0])
    return cm, n


def scores(cm: Array) -> tuple[float, float]:
    """Mean IoU over classes that occur (in truth or prediction), and pixel accuracy."""
    tp = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - tp
    present = union > 0
    miou = float((tp[present] / union[present]).mean()) if present.any() else 0.0
    acc = float(tp.sum() / cm.sum()) if cm.sum() else 0.0
    return miou, acc


class Evaluator:
    """Evaluates a model on the decoded eval set and writes a picture of a few predictions."""

    def __init__(self, model: keras.Model, messages: list[EvalMessage], image_size: int, snapshot_dir: str,
                 batch_size: int = 16, pictures: int = 4, max_pixels: int = pipeline.MAX_PIXELS) -> None:
        self.classify = classifier(model)
        self.snapshot_dir = Path(snapshot_dir) if snapshot_dir else None
        self.pictures = pictures
        self.batches: list[dict[str, tf.Tensor]] = []
        kept: set[int] = set()
        for batch in pipeline.decode_values([m.value for m in messages], image_size, batch_size, max_pixels):
            self.batches.append({"image": batch["image"], "mask": batch["mask"]})  # uint8: a quarter of float32
            kept.update(batch["offset"].numpy().tolist())
        self.size = len(kept)
        # The well-formed ones are kept; the others are for the dead-letter topic.
        self.malformed = [m for i, m in enumerate(messages) if i not in kept]

    def evaluate(self, step: int) -> EvalResult:
        cm, n = confusion(self.classify, self.batches)
        miou, acc = scores(cm)
        pictures = self._pictures() if self.pictures and self.batches else None
        snapshot = None
        if self.snapshot_dir is not None and pictures is not None:
            try:
                snapshot = write_snapshot(self.snapshot_dir, step, pictures)
            except OSError as exc:  # a picture is a convenience: never a reason to stop training
                log.error("cannot write the eval snapshot into %s: %s", self.snapshot_dir, exc)
        return EvalResult(step, miou, acc, n, snapshot, pictures)

    def _pictures(self) -> Pictures:
        """The first few eval examples, always the same ones, and the current weights' answer."""
        batch = self.batches[0]
        k = min(self.pictures, int(batch["image"].shape[0]))
        pred = self.classify(batch["image"][:k])
        return Pictures(batch["image"][:k].numpy(), batch["mask"][:k, ..., 0].numpy(), pred.numpy().astype(np.uint8))


def write_snapshot(directory: Path, step: int, pictures: Pictures) -> Path:
    """``eval-step-<step>.png`` and ``latest.png`` in ``directory``; the newest KEEP_SNAPSHOTS stay."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"eval-step-{step:08d}.png"
    tmp = directory / f".latest-{os.getpid()}.png"
    png = snapshot_png(pictures)
    path.write_bytes(png)
    tmp.write_bytes(png)
    tmp.replace(directory / "latest.png")
    # A daemon evaluates forever: keep the recent pictures, not one per evaluation since day one.
    for old in sorted(directory.glob("eval-step-*.png"))[:-KEEP_SNAPSHOTS]:
        old.unlink(missing_ok=True)
    return path


def side_by_side(p: Pictures) -> npt.NDArray[np.uint8]:
    """One uint8 picture per example: the image, the true trimap and the predicted one, in a row."""
    gap = np.full((*p.image.shape[:2], GAP_PX, 3), 255, np.uint8)
    return np.concatenate([p.image, gap, PALETTE[p.truth], gap, PALETTE[p.predicted]], axis=2)


def snapshot_png(p: Pictures) -> bytes:
    """The examples' rows one above the other, as PNG bytes.

    Drawn with TensorFlow's PNG encoder rather than matplotlib: matplotlib caches a font per
    drawing thread, and each evaluation of a multi-worker job runs in a thread of its own, so a
    month of evaluations would hold open font files by the hundred (and import a plotting stack).
    """
    rows = side_by_side(p)
    gap = np.full((GAP_PX, *rows.shape[2:]), 255, np.uint8)
    grid = np.concatenate([part for row in rows for part in (row, gap)][:-1], axis=0)
    return bytes(tf.io.encode_png(grid).numpy())
