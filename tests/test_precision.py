"""Mixed precision: choosing a policy, building the model and optimizer in it, training in it."""

from __future__ import annotations

from collections.abc import Iterator

import keras
import pytest
import tensorflow as tf

from stream_trainer.config import ModelConfig
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


# Training in each precision runs the project's own replica step: tests/test_step.py.
