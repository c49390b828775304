"""The project's own replica step (stream_trainer/learn/step.py), not a copy of it: its loss
weighting across workers, its test-then-train order, and training under each precision."""

from __future__ import annotations

from collections.abc import Iterator

import keras
import numpy as np
import pytest
import tensorflow as tf

from producer.sources.synthetic import generate
from stream_trainer import wire
from stream_trainer.config import ModelConfig
from stream_trainer.ingest import pipeline
from stream_trainer.learn import precision
from stream_trainer.learn.model import build_unet
from stream_trainer.learn.step import StepFn, input_signature, make_replica_step

TINY = ModelConfig(base_filters=4, depth=2, learning_rate=0.01)
SIZE = 32


@pytest.fixture(autouse=True)
def float32_afterwards() -> Iterator[None]:
    yield
    keras.config.set_dtype_policy("float32")  # the policy is process-global


def _rows(count: int) -> tuple[tf.Tensor, tf.Tensor]:
    """Real synthetic pets, decoded by the trainer's pipeline code: uint8 rows as the step takes them."""
    decoded = [pipeline.decode_example(tf.constant(wire.encode(r, 0)), SIZE)
               for r in generate(count, seed=5, min_size=48, max_size=64)]
    return tf.stack([d["image"] for d in decoded]), tf.stack([d["mask"] for d in decoded])


def _step(policy_name: str, seed: int = 1) -> tuple[keras.Model, keras.optimizers.Optimizer, StepFn]:
    policy = precision.apply(policy_name)
    keras.utils.set_random_seed(seed)
    model = build_unet(SIZE, TINY)
    optimizer = precision.build_optimizer(TINY, policy)
    optimizer.build(model.trainable_variables)
    step = tf.function(make_replica_step(model, optimizer, SIZE, flip=False), input_signature=input_signature(SIZE))
    return model, optimizer, step


def _weights(model: keras.Model) -> list[np.ndarray]:
    return [v.numpy().copy() for v in model.trainable_variables]


def _per_row_loss(model: keras.Model, images: tf.Tensor, masks: tf.Tensor) -> np.ndarray:
    """Each row's mean pixel loss under the model's current weights, as the step's forward pass sees it."""
    pixel_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    logits = model(tf.cast(images, tf.float32) / 255.0, training=True)
    return tf.reduce_mean(pixel_loss(tf.cast(masks, tf.int32), logits), axis=[1, 2]).numpy()


def test_the_loss_is_the_weighted_mean_over_the_rows_of_the_whole_step() -> None:
    """Rows of weight 0 (an idle worker's placeholders) count for nothing; the divisor is the weight
    of every worker's rows, so the workers' summed gradients are those of the mean over real rows."""
    images, masks = _rows(4)
    model, _, step = _step("float32")
    per_row = _per_row_loss(model, images, masks)
    weight, fresh = tf.constant([1.0, 1.0, 0.0, 0.0]), tf.constant([True] * 4)
    # This worker brings 2 real rows; with a step total of 2 it is alone, with 6 another worker brought 4.
    out = step(images, masks, weight, fresh, tf.constant(2.0))
    assert float(out["loss"]) == pytest.approx((per_row[0] + per_row[1]) / 2, rel=1e-5)
    assert int(out["fresh_rows"]) == 2  # zero-weight rows are not scored either
    assert int(np.sum(out["fresh_confusion"])) == 2 * SIZE * SIZE
    model, _, step = _step("float32")
    out = step(images, masks, weight, fresh, tf.constant(6.0))
    assert float(out["loss"]) == pytest.approx((per_row[0] + per_row[1]) / 6, rel=1e-5)


def test_a_step_of_only_zero_weight_rows_leaves_the_weights_alone() -> None:
    """An idle worker steps with placeholder rows: its gradients are zero, so it adds nothing to the sum."""
    images, masks = _rows(2)
    model, _, step = _step("float32")
    grads_seen = _weights(model)
    out = step(images, masks, tf.zeros([2]), tf.constant([True, True]), tf.constant(8.0))
    assert float(out["loss"]) == 0.0 and int(out["fresh_rows"]) == 0
    # Adam with a zero gradient still moves nothing: m and v stay 0, the update is 0 / (sqrt(0) + eps).
    for old, new in zip(grads_seen, _weights(model), strict=True):
        np.testing.assert_array_equal(old, new)


def test_rows_are_scored_by_the_weights_before_the_step_trains_on_them() -> None:
    """Test-then-train: the prequential loss is the loss of the weights as they were before the update."""
    images, masks = _rows(4)
    model, _, step = _step("float32")
    pixel_loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    x = tf.cast(images, tf.float32) / 255.0
    before = float(tf.reduce_sum(tf.reduce_mean(pixel_loss(tf.cast(masks, tf.int32), model(x, training=True)),
                                                axis=[1, 2])))
    out = step(images, masks, tf.ones([4]), tf.constant([True, True, False, False]), tf.constant(4.0))
    fresh_and_replayed = float(out["fresh_loss_sum"]) + float(out["replay_loss_sum"])
    assert fresh_and_replayed == pytest.approx(before, rel=1e-4)
    assert int(out["fresh_rows"]) == 2 and int(out["replay_rows"]) == 2
    after = float(tf.reduce_sum(tf.reduce_mean(pixel_loss(tf.cast(masks, tf.int32), model(x, training=True)),
                                               axis=[1, 2])))
    assert after != pytest.approx(before, rel=1e-4)  # the step did train: the comparison above can fail


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16", "mixed_float16"])
def test_the_replica_step_learns_a_fixed_batch_in_each_precision(policy: str) -> None:
    images, masks = _rows(8)
    _, optimizer, step = _step(policy)
    ones, fresh, total = tf.ones([8]), tf.constant([True] * 8), tf.constant(8.0)
    losses = [float(step(images, masks, ones, fresh, total)["loss"]) for _ in range(25)]
    assert all(np.isfinite(losses)), losses
    assert np.mean(losses[-3:]) < 0.7 * losses[0], losses
    if policy == "mixed_float16":
        assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)


def test_an_overflowing_float16_step_is_skipped_without_touching_the_weights() -> None:
    images, masks = _rows(2)
    model, optimizer, step = _step("mixed_float16")
    # 2**60 keeps the scaled loss finite in float32, but the gradient entering the first float16
    # layer is far above float16's maximum (65504): inf, so the optimizer must skip the update.
    optimizer.dynamic_scale.assign(2.0**60)
    before = _weights(model)
    args = (images, masks, tf.ones([2]), tf.constant([True, True]), tf.constant(2.0))
    out = step(*args)
    assert np.isfinite(float(out["loss"]))
    assert float(optimizer.dynamic_scale.numpy()) == 2.0**59
    assert int(optimizer.iterations.numpy()) == 0
    for old, new in zip(before, _weights(model), strict=True):
        np.testing.assert_array_equal(old, new)
    optimizer.dynamic_scale.assign(2.0**8)
    step(*args)
    assert int(optimizer.iterations.numpy()) == 1
    assert any(not np.array_equal(a, b) for a, b in zip(before, _weights(model), strict=True))
