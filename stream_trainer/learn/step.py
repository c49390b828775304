"""One training step on one worker's batch: test first, then train.

Every row of a batch is scored by the forward pass the step makes anyway, before the weights
change: rows that are fresh (first time seen) give a *prequential* ("test-then-train") estimate of
how well the model does on new data, replayed rows one of how well it still does on the past.
A growing gap between the two losses is the sign of drift (docs/learning.md).

Rows carry weights: a row of weight 0 contributes nothing (an idle worker's placeholder rows in a
multi-worker step). The loss is the weighted sum over this worker's rows divided by the weight of
the *whole* step across workers, so that the summed gradients of all workers are the gradient of
the mean over every real row of the step, whatever each worker contributed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from stream_trainer.wire import NUM_CLASSES

StepFn = Callable[..., dict[str, tf.Tensor]]


def make_replica_step(model: keras.Model, optimizer: keras.optimizers.Optimizer, image_size: int,
                      flip: bool) -> StepFn:
    """The step for one replica: inputs are uint8 rows, weights, a fresh mask and the step's total weight."""
    pixel_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

    def step(image: tf.Tensor, mask: tf.Tensor, weight: tf.Tensor, fresh: tf.Tensor,
             total_weight: tf.Tensor) -> dict[str, tf.Tensor]:
        x = tf.cast(image, tf.float32) / 255.0
        y = tf.cast(mask, tf.int32)
        if flip:
            x, y = flip_rows(x, y, tf.random.uniform([tf.shape(x)[0]]) < 0.5)
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            per_row = tf.reduce_mean(pixel_loss(y, logits), axis=[1, 2])
            loss = tf.reduce_sum(per_row * weight) / tf.maximum(total_weight, 1.0)
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))

        counted = weight > 0
        fresh_rows = tf.logical_and(counted, fresh)
        replay_rows = tf.logical_and(counted, tf.logical_not(fresh))
        pred = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return {
            "loss": loss,
            "fresh_loss_sum": tf.reduce_sum(tf.boolean_mask(per_row, fresh_rows)),
            "fresh_rows": tf.reduce_sum(tf.cast(fresh_rows, tf.int32)),
            "replay_loss_sum": tf.reduce_sum(tf.boolean_mask(per_row, replay_rows)),
            "replay_rows": tf.reduce_sum(tf.cast(replay_rows, tf.int32)),
            "fresh_confusion": _confusion(y, pred, fresh_rows),
            "replay_confusion": _confusion(y, pred, replay_rows),
        }

    return step


def flip_rows(x: tf.Tensor, y: tf.Tensor, coins: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Mirror the rows whose coin is True, image and mask together (a flipped image with an
    unflipped mask is a wrong label); done in the step, on its device, for fresh and replayed rows."""
    c = coins[:, None, None, None]
    return tf.where(c, tf.reverse(x, [2]), x), tf.where(c, tf.reverse(y, [2]), y)


def _confusion(y: tf.Tensor, pred: tf.Tensor, rows: tf.Tensor) -> tf.Tensor:
    pixels = tf.cast(tf.broadcast_to(rows[:, None, None], tf.shape(pred)), tf.int64)
    return tf.math.confusion_matrix(tf.reshape(y, [-1]), tf.reshape(pred, [-1]), num_classes=NUM_CLASSES,
                                    weights=tf.reshape(pixels, [-1]), dtype=tf.int64)


def input_signature(image_size: int) -> list[Any]:
    """Rows of any count: one trace serves every batch size (partial batches, placeholders)."""
    return [tf.TensorSpec([None, image_size, image_size, 3], tf.uint8),
            tf.TensorSpec([None, image_size, image_size, 1], tf.uint8),
            tf.TensorSpec([None], tf.float32), tf.TensorSpec([None], tf.bool), tf.TensorSpec([], tf.float32)]
