"""Evaluation on the held-out eval topic: mean IoU, pixel accuracy and a snapshot picture.

The eval topic is small and fixed, so it is read once, bounded (low to high watermark at the
time of reading), decoded by the same code as training, and kept in memory. Malformed eval
messages are counted and dead-lettered like training ones, not skipped silently.
"""

from __future__ import annotations

import logging
import os
import time
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


def confusion(model: keras.Model, batches: list[dict[str, tf.Tensor]]) -> tuple[Array, int]:
    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    n = 0
    for batch in batches:
        pred = tf.argmax(model(tf.cast(batch["image"], tf.float32) / 255.0, training=False), axis=-1)
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
        self.model = model
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
        cm, n = confusion(self.model, self.batches)
        miou, acc = scores(cm)
        pictures = self._pictures() if self.pictures and self.batches else None
        snapshot = None
        if self.snapshot_dir is not None and pictures is not None:
            try:
                snapshot = self._snapshot(step, pictures)
            except OSError as exc:  # a picture is a convenience: never a reason to stop training
                log.error("cannot write the eval snapshot into %s: %s", self.snapshot_dir, exc)
        return EvalResult(step, miou, acc, n, snapshot, pictures)

    def _pictures(self) -> Pictures:
        """The first few eval examples, always the same ones, and the current weights' answer."""
        batch = self.batches[0]
        k = min(self.pictures, int(batch["image"].shape[0]))
        pred = tf.argmax(self.model(tf.cast(batch["image"][:k], tf.float32) / 255.0, training=False), axis=-1)
        return Pictures(batch["image"][:k].numpy(), batch["mask"][:k, ..., 0].numpy(), pred.numpy().astype(np.uint8))

    def _snapshot(self, step: int, pictures: Pictures) -> Path | None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        if self.snapshot_dir is None:
            return None
        k = len(pictures.image)
        fig, axes = plt.subplots(k, 3, figsize=(6, 2 * k), squeeze=False)
        for i in range(k):
            panels = [(pictures.image[i], "image"), (pictures.truth[i], "true trimap"),
                      (pictures.predicted[i], f"predicted (step {step})")]
            for ax, (img, title) in zip(axes[i], panels, strict=True):
                ax.imshow(img, vmin=0, vmax=NUM_CLASSES - 1, cmap=None if img.ndim == 3 else "viridis")
                ax.set_title(title, fontsize=8)
                ax.axis("off")
        fig.tight_layout()
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        path = self.snapshot_dir / f"eval-step-{step:08d}.png"
        tmp = self.snapshot_dir / f".latest-{os.getpid()}.png"
        fig.savefig(path, dpi=80)
        fig.savefig(tmp, dpi=80)
        plt.close(fig)
        tmp.replace(self.snapshot_dir / "latest.png")
        # A daemon evaluates forever: keep the recent pictures, not one per evaluation since day one.
        for old in sorted(self.snapshot_dir.glob("eval-step-*.png"))[:-KEEP_SNAPSHOTS]:
            old.unlink(missing_ok=True)
        return path
