"""Mixed precision: choosing a policy, building the model and optimizer in it, training in it."""

from __future__ import annotations

from collections.abc import Callable, Iterator

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
from stream_trainer.learn.precision import Gpu

TINY = ModelConfig(base_filters=4, depth=2, learning_rate=0.01)
CPUINFO_BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 amx_tile\n\nprocessor\t: 1\n"
CPUINFO_AMX = "flags\t\t: fpu avx2 amx_bf16 amx_tile\n"
CPUINFO_PLAIN = "flags\t\t: fpu sse2 avx2 avx512f\n"


@pytest.fixture(autouse=True)
def float32_afterwards() -> Iterator[None]:
    # The policy is process-global: leave it as every other test expects it.
    yield
    keras.config.set_dtype_policy("float32")


# -- choosing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("cpuinfo", "gpus", "policy"), [
    (CPUINFO_PLAIN, [Gpu("H100", (9, 0))], "mixed_bfloat16"),
    (CPUINFO_PLAIN, [Gpu("A100", (8, 0))], "mixed_bfloat16"),
    (CPUINFO_BF16, [Gpu("T4", (7, 5))], "mixed_float16"),  # a GPU decides, not the CPU
    (CPUINFO_PLAIN, [Gpu("A100", (8, 0)), Gpu("V100", (7, 0))], "mixed_float16"),  # weakest GPU decides
    (CPUINFO_PLAIN, [Gpu("P4", (6, 1))], "float32"),
    (CPUINFO_PLAIN, [Gpu("MI250", None)], "float32"),
    (CPUINFO_BF16, [], "mixed_bfloat16"),
    (CPUINFO_AMX, [], "mixed_bfloat16"),
    (CPUINFO_PLAIN, [], "float32"),
    ("", [], "float32"),  # no /proc/cpuinfo (macOS)
])
def test_auto_resolves_from_the_gpus_first_then_the_cpu_flags(cpuinfo: str, gpus: list[Gpu], policy: str) -> None:
    choice = precision.resolve("auto", cpuinfo, gpus)
    assert choice.policy == policy
    assert choice.reason.startswith("auto: ")


def test_an_explicit_precision_is_taken_as_is_and_an_unknown_one_is_refused() -> None:
    assert precision.resolve("mixed_float16", CPUINFO_PLAIN, []).policy == "mixed_float16"
    assert precision.resolve("float32", CPUINFO_BF16, [Gpu("H100", (9, 0))]).policy == "float32"
    with pytest.raises(ValueError, match="bfloat16"):
        precision.resolve("bfloat16", CPUINFO_BF16, [])


def test_apply_sets_the_global_policy_and_logs_the_reason(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="stream_trainer.learn.precision")
    assert precision.apply("mixed_bfloat16") == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == "mixed_bfloat16"
    assert "precision mixed_bfloat16 (set by trainer.model.precision)" in caplog.text


# -- model and optimizer -----------------------------------------------------------------------


def test_mixed_bfloat16_computes_in_bfloat16_but_returns_float32_logits() -> None:
    precision.apply("mixed_bfloat16")
    model = build_unet(16, TINY)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    assert convs[0].compute_dtype == "bfloat16"
    assert convs[0].kernel.dtype == "float32"  # variables stay float32: updates are not rounded away
    assert model.get_layer("logits").compute_dtype == "float32"
    assert model(tf.zeros([1, 16, 16, 3])).dtype == tf.float32


def test_only_mixed_float16_gets_a_loss_scale_optimizer() -> None:
    for policy in ("float32", "mixed_bfloat16"):
        assert not isinstance(precision.build_optimizer(TINY, policy), keras.optimizers.LossScaleOptimizer)
    assert isinstance(precision.build_optimizer(TINY, "mixed_float16"), keras.optimizers.LossScaleOptimizer)
    # Without an argument the global policy decides, so model.build_optimizer follows apply().
    precision.apply("mixed_float16")
    assert isinstance(precision.build_optimizer(TINY), keras.optimizers.LossScaleOptimizer)


# -- training ----------------------------------------------------------------------------------


Step = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def recipe_step(model: keras.Model, optimizer: keras.optimizers.Optimizer) -> Step:
    """The training step exactly as precision.py's docstring tells a custom loop to write it."""
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    optimizer.build(model.trainable_variables)

    def step(images: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_fn(masks, model(images, training=True))
            scaled = optimizer.scale_loss(loss)
        grads = tape.gradient(scaled, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    compiled: Step = tf.function(step)
    return compiled


def pets(count: int, size: int) -> tuple[tf.Tensor, tf.Tensor]:
    """A fixed batch of synthetic pets, decoded by the trainer's own pipeline code."""
    decoded = [pipeline.decode_example(tf.constant(wire.encode(r, 0)), size)
               for r in generate(count, seed=5, min_size=48, max_size=64)]
    images = tf.stack([d["image"] for d in decoded])
    masks = tf.stack([d["mask"] for d in decoded])
    return tf.cast(images, tf.float32) / 255.0, masks


def test_a_float16_step_whose_gradients_overflow_is_skipped_without_touching_the_weights() -> None:
    policy = precision.apply("mixed_float16")
    model = build_unet(16, TINY)
    optimizer = precision.build_optimizer(TINY, policy)
    step = recipe_step(model, optimizer)
    images, masks = pets(2, 16)
    # A scale of 2**60 keeps the scaled loss finite in float32, but the gradient entering the
    # first float16 layer (~2**60 / pixels) is far above float16's maximum of 65504: inf.
    optimizer.dynamic_scale.assign(2.0**60)
    before = [v.numpy().copy() for v in model.trainable_variables]
    loss = step(images, masks)
    assert np.isfinite(float(loss))
    assert float(optimizer.dynamic_scale.numpy()) == 2.0**59  # halved for the next try
    assert int(optimizer.iterations.numpy()) == 0  # Adam never saw the step
    for old, var in zip(before, model.trainable_variables, strict=True):
        np.testing.assert_array_equal(old, var.numpy(), err_msg=var.path)
    # The same step at a sane scale does update the weights: the comparison above can fail.
    optimizer.dynamic_scale.assign(2.0**8)
    step(images, masks)
    assert int(optimizer.iterations.numpy()) == 1
    assert any(not np.array_equal(old, var.numpy()) for old, var in zip(before, model.trainable_variables,
                                                                          strict=True))
    assert all(np.isfinite(v.numpy()).all() for v in model.trainable_variables)


def test_a_bfloat16_training_step_reduces_the_loss_on_a_fixed_batch() -> None:
    policy = precision.apply("mixed_bfloat16")
    keras.utils.set_random_seed(1)
    model = build_unet(32, TINY)
    step = recipe_step(model, precision.build_optimizer(TINY, policy))
    images, masks = pets(8, 32)
    losses = [float(step(images, masks)) for _ in range(25)]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-3:]) < 0.7 * losses[0], losses
