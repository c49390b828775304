"""A compact U-Net for 3-class trimap segmentation, built from scratch (no downloaded weights)."""

from __future__ import annotations

import keras
from keras import layers

from stream_trainer.config import ModelConfig
from stream_trainer.learn import precision
from stream_trainer.learn.batch_norm import FusedBatchNormalization
from stream_trainer.wire import NUM_CLASSES

# Batch norm's moving statistics, which a served model normalises with, are an average over the
# last ~1/(1 - momentum) steps, started from mean 0 / variance 1 and never bias-corrected. At
# Keras's 0.99 a job 112 steps old still had a third of that start in them: its exports scored
# 0.595 mean IoU where the same weights in training mode scored 0.893. At 0.9 the start is gone
# within ~50 steps, and a drifting stream's statistics are followed within as many.
BN_MOMENTUM = 0.9


def conv_block(x: keras.KerasTensor, filters: int) -> keras.KerasTensor:
    """Two 3x3 convolutions with batch norm: the U-Net's basic unit."""
    for _ in range(2):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = FusedBatchNormalization(momentum=BN_MOMENTUM)(x)
        x = layers.Activation("relu")(x)
    return x


def build_unet(image_size: int, cfg: ModelConfig) -> keras.Model:
    """U-Net with ``cfg.depth`` down/up levels; filters double per level from ``base_filters``.

    Output: per-pixel float32 logits for pet / background / border (softmax lives in the loss).
    Layers compute in the global Keras dtype policy (``precision.apply``); the last one always
    in float32, so that the loss and the argmax see exact logits under mixed precision.
    """
    inputs = keras.Input((image_size, image_size, 3), name="image")
    x = inputs
    skips = []
    for level in range(cfg.depth):
        x = conv_block(x, cfg.base_filters * 2**level)
        skips.append(x)
        x = layers.MaxPooling2D()(x)
    x = conv_block(x, cfg.base_filters * 2**cfg.depth)
    for level in reversed(range(cfg.depth)):
        x = layers.Conv2DTranspose(cfg.base_filters * 2**level, 2, strides=2, padding="same")(x)
        x = layers.Concatenate()([x, skips[level]])
        x = conv_block(x, cfg.base_filters * 2**level)
    logits = layers.Conv2D(NUM_CLASSES, 1, name="logits", dtype="float32")(x)
    return keras.Model(inputs, logits, name="unet")


def build_optimizer(cfg: ModelConfig) -> keras.optimizers.Optimizer:
    """Adam, loss-scaled when the global policy is mixed_float16 (see ``precision.build_optimizer``)."""
    return precision.build_optimizer(cfg)
