"""The fused batch normalisation is Keras's, computed by one kernel: same outputs, gradients,
moving statistics, checkpoints; and the ``model.keras`` export still loads without our package."""

from __future__ import annotations

import zipfile
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import layers

from stream_trainer.config import ModelConfig
from stream_trainer.learn.batch_norm import FusedBatchNormalization, plain_copy
from stream_trainer.learn.model import build_unet

# Mixed-precision activations go through the kernel in their own 16 bits, Keras's layer in float32.
TOLERANCE = {"float32": 1e-4, "mixed_bfloat16": 5e-2, "mixed_float16": 5e-3}


@pytest.fixture(params=list(TOLERANCE))
def policy(request: pytest.FixtureRequest) -> str:
    before = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(request.param)
    yield request.param
    keras.mixed_precision.set_global_policy(before)


def _pair(momentum: float = 0.9) -> tuple[layers.Layer, layers.Layer]:
    keras_bn, fused_bn = layers.BatchNormalization(momentum=momentum), FusedBatchNormalization(momentum=momentum)
    for bn in (keras_bn, fused_bn):
        bn.build((None, 6, 6, 5))
    rng = np.random.default_rng(1)
    weights = [rng.normal(1, 0.2, 5), rng.normal(0, 0.2, 5), rng.normal(0, 1, 5), rng.uniform(0.5, 2, 5)]
    for bn in (keras_bn, fused_bn):
        bn.set_weights([w.astype(np.float32) for w in weights])  # gamma, beta, moving mean, moving variance
    return keras_bn, fused_bn


def test_training_and_inference_match_keras_batch_normalization(policy: str) -> None:
    keras_bn, fused_bn = _pair()
    x = tf.constant(np.random.default_rng(2).normal(3, 2, (4, 6, 6, 5)), tf.float32)
    x = tf.cast(x, keras_bn.compute_dtype)
    tol = TOLERANCE[policy]
    outs, grads = [], []
    for bn in (keras_bn, fused_bn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = bn(x, training=True)
            loss = tf.reduce_sum(tf.cast(y, tf.float32) * tf.range(5, dtype=tf.float32))
        outs.append(tf.cast(y, tf.float32).numpy())
        grads.append([g.numpy().astype(np.float32) for g in tape.gradient(loss, [x, bn.gamma, bn.beta])])
    assert outs[1].dtype == outs[0].dtype
    np.testing.assert_allclose(outs[1], outs[0], atol=tol, rtol=tol)
    for got, want in zip(grads[1], grads[0], strict=True):
        np.testing.assert_allclose(got, want, atol=tol * 10, rtol=tol * 10)
    for got, want in zip(fused_bn.get_weights(), keras_bn.get_weights(), strict=True):  # moving stats moved alike
        np.testing.assert_allclose(got, want, atol=tol, rtol=tol)
    inference = [tf.cast(bn(x, training=False), tf.float32).numpy() for bn in (keras_bn, fused_bn)]
    np.testing.assert_allclose(inference[1], inference[0], atol=tol, rtol=tol)
    assert not np.allclose(inference[0], outs[0], atol=tol), "inference used the batch's statistics"


def test_a_checkpoint_of_keras_layers_restores_into_the_fused_model_and_the_export_loads_plain(
        tmp_path: Path) -> None:
    cfg = ModelConfig(base_filters=4, depth=2)
    old = build_unet(32, cfg)
    # The model as it was built before: Keras's own layer in every block.
    plain = plain_copy(old)
    assert not any(isinstance(layer, FusedBatchNormalization) for layer in plain.layers)
    assert sum(isinstance(layer, FusedBatchNormalization) for layer in old.layers) == 2 * (2 * cfg.depth + 1)
    rng = np.random.default_rng(3)
    plain.set_weights([rng.normal(0, 0.1, w.shape).astype(np.float32) + (1 if "variance" in v.path else 0)
                       for w, v in zip(plain.get_weights(), plain.weights, strict=True)])
    path = tf.train.Checkpoint(model=plain).save(str(tmp_path / "ckpt" / "c"))
    fresh = build_unet(32, cfg)
    tf.train.Checkpoint(model=fresh).restore(path).assert_consumed()
    x = tf.constant(rng.uniform(0, 1, (2, 32, 32, 3)), tf.float32)
    np.testing.assert_allclose(fresh(x, training=False).numpy(), plain(x, training=False).numpy(), atol=1e-4)

    plain_copy(fresh).save(tmp_path / "model.keras")
    with zipfile.ZipFile(tmp_path / "model.keras") as archive:
        config = archive.read("config.json").decode()
    assert '"BatchNormalization"' in config and "Fused" not in config
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(loaded(x, training=False).numpy(), fresh(x, training=False).numpy(), atol=1e-4)
