"""Batch normalisation as one fused kernel: a training step's memory and time.

Keras 3's ``BatchNormalization`` casts a mixed-precision input to float32 and normalises it with
separate ops (moments, subtract, divide, scale, shift), every intermediate a float32 copy of the
activation kept for the gradient. In the U-Net's 14 of them at 16 x 128 px that was 82.5 MiB of a
training step's memory and 42 % of its time (0.4245 against 0.2475 s fused; docs/benchmarks.md,
memory per worker).
TensorFlow's ``FusedBatchNormV3`` reads the bfloat16 or float16 activation as it is, computes in
float32 inside the kernel, and keeps only its input and two per-channel vectors for the gradient.

Same variables, same updates (the biased batch variance into the moving one, Keras's momentum),
so checkpoints written with Keras's layer restore into this one (they are keyed by position, not
class). ``plain_copy`` gives the same model with Keras's own layer, for ``model.keras`` exports:
they load with ``keras.saving.load_model`` anywhere, without this package.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import layers


class FusedBatchNormalization(layers.BatchNormalization):  # type: ignore[misc]
    """``keras.layers.BatchNormalization`` on channels-last 4-D input, as one fused kernel."""

    def call(self, inputs: tf.Tensor, training: bool | None = None, mask: tf.Tensor | None = None) -> tf.Tensor:
        if (mask is not None or len(inputs.shape) != 4 or self.axis not in (-1, 3, [3], [-1])
                or not (self.center and self.scale) or self.renorm or self.synchronized):
            return super().call(inputs, training=training, mask=mask)
        gamma, beta = tf.convert_to_tensor(self.gamma), tf.convert_to_tensor(self.beta)
        if training and self.trainable:
            empty = tf.zeros([0], tf.float32)
            y, mean, variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
                x=inputs, scale=gamma, offset=beta, mean=empty, variance=empty, epsilon=self.epsilon,
                exponential_avg_factor=1.0, data_format="NHWC", is_training=True)
            # The kernel's batch variance is Bessel-corrected; Keras's layer averages the biased one.
            n = tf.cast(tf.reduce_prod(tf.shape(inputs)[:-1]), tf.float32)
            variance = variance * (n - 1.0) / tf.maximum(n, 1.0)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
            return y
        y, _, _, _, _, _ = tf.raw_ops.FusedBatchNormV3(
            x=inputs, scale=gamma, offset=beta, mean=tf.convert_to_tensor(self.moving_mean),
            variance=tf.convert_to_tensor(self.moving_variance), epsilon=self.epsilon,
            exponential_avg_factor=1.0, data_format="NHWC", is_training=False)
        return y


def plain_copy(model: keras.Model) -> keras.Model:
    """``model`` with Keras's own batch normalisation in place of the fused one, same weights."""

    def clone(layer: layers.Layer) -> layers.Layer:
        kind = layers.BatchNormalization if isinstance(layer, FusedBatchNormalization) else type(layer)
        return kind.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy
