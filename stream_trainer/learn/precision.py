"""Mixed precision: which Keras dtype policy the trainer computes in, and the optimizer it needs.

``trainer.model.precision`` is ``auto``, ``float32``, ``mixed_bfloat16`` or ``mixed_float16``.
The mixed policies keep variables in float32 and compute layers in 16 bits; ``build_unet`` keeps
its last layer (the logits) in float32 whatever the policy, so the loss and the argmax are exact.

``auto`` resolves once at start (``resolve``, a pure function of the CPU flags and the GPUs):

* a GPU of compute capability >= 8.0 (Ampere and later) -> ``mixed_bfloat16``: bf16 tensor
  cores, float32's exponent range, so no loss scaling;
* a GPU of compute capability 7.x (Volta, Turing) -> ``mixed_float16``: fp16 tensor cores but
  no bf16; fp16's narrow range needs loss scaling (``build_optimizer``);
* an older GPU -> ``float32``: without tensor cores 16-bit compute gains nothing (TensorFlow's
  mixed precision guide), and fp16 still costs loss scaling;
* no GPU, a CPU with ``avx512_bf16`` or ``amx_bf16`` -> ``mixed_bfloat16`` (oneDNN's bf16
  kernels; measured faster than float32 for this U-Net, see ``workbench/bench/precision.py``);
* otherwise -> ``float32``.

A custom training step under ``mixed_float16`` must scale the loss itself (Keras 3 only does
it inside ``fit``)::

    with tf.GradientTape() as tape:
        loss = loss_fn(masks, model(images, training=True))
        scaled = optimizer.scale_loss(loss)  # loss * dynamic scale; plain optimizers return loss
    grads = tape.gradient(scaled, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))

``LossScaleOptimizer.apply_gradients`` divides the gradients by the scale and, if any is
inf or NaN, skips the update (weights and Adam slots untouched) and halves the scale; after
2000 finite steps it doubles it. Call ``optimizer.build(model.trainable_variables)`` before the
step is first traced: an unbuilt ``LossScaleOptimizer`` scales by a Python constant, which
``tf.function`` would freeze into the graph. Without ``scale_loss`` the update is divided by
the scale (2**15) and training silently stalls.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import keras
import tensorflow as tf

from stream_trainer.config import ModelConfig

log = logging.getLogger(__name__)

POLICIES = ("float32", "mixed_bfloat16", "mixed_float16")
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


@dataclass(frozen=True)
class Gpu:
    """A GPU TensorFlow can see; ``compute_capability`` is None when the driver does not say (ROCm)."""

    name: str
    compute_capability: tuple[int, int] | None


@dataclass(frozen=True)
class Choice:
    """A resolved dtype policy and the reason for it, in words for the log."""

    policy: str
    reason: str


def cpu_flags(cpuinfo: str) -> set[str]:
    """The feature flags of the first processor in a /proc/cpuinfo text (empty if none)."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return set(value.split())
    return set()


def resolve(requested: str, cpuinfo: str, gpus: Sequence[Gpu]) -> Choice:
    """The dtype policy for ``requested`` (a ``trainer.model.precision`` value) on this hardware.

    Pure: ``cpuinfo`` is the text of /proc/cpuinfo ("" where there is none), ``gpus`` the visible
    GPUs. Raises ValueError for an unknown ``requested`` (config validation rejects it earlier).
    """
    if requested in POLICIES:
        return Choice(requested, "set by trainer.model.precision")
    if requested != "auto":
        msg = f"unknown precision {requested!r}; expected auto or one of {', '.join(POLICIES)}"
        raise ValueError(msg)
    if gpus:
        # Several GPUs train one model in lockstep: the least capable one decides.
        rated = [(g.compute_capability, g.name) for g in gpus if g.compute_capability is not None]
        if len(rated) < len(gpus):
            return Choice("float32", "auto: a GPU does not report its compute capability")
        cc, name = min(rated)
        where = f"GPU {name} (compute capability {cc[0]}.{cc[1]})"
        if cc >= (8, 0):
            return Choice("mixed_bfloat16", f"auto: {where} has bfloat16 tensor cores")
        if cc >= (7, 0):
            return Choice("mixed_float16", f"auto: {where} has float16 but no bfloat16 tensor cores")
        return Choice("float32", f"auto: {where} has no tensor cores; 16-bit compute would not be faster")
    bf16 = sorted(cpu_flags(cpuinfo).intersection(CPU_BF16_FLAGS))
    if bf16:
        return Choice("mixed_bfloat16", f"auto: no GPU; the CPU has {' and '.join(bf16)}")
    return Choice("float32", "auto: no GPU and no bfloat16 instructions on the CPU")


def visible_gpus() -> list[Gpu]:
    """The GPUs TensorFlow can use in this process, with their compute capabilities."""
    gpus = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        cc = details.get("compute_capability")
        gpus.append(Gpu(str(details.get("device_name", device.name)), (int(cc[0]), int(cc[1])) if cc else None))
    return gpus


def read_cpuinfo(path: Path = Path("/proc/cpuinfo")) -> str:
    """The text of /proc/cpuinfo, or "" where it does not exist (macOS, Windows)."""
    try:
        return path.read_text()
    except OSError:
        return ""


def apply(precision: str) -> str:
    """Resolve ``precision`` on this machine, set Keras's global dtype policy, log why; return the policy.

    Call before the model is built: layers take the global policy when they are created.
    """
    # An explicit policy needs no hardware probe (listing GPUs initialises CUDA).
    gpus = visible_gpus() if precision == "auto" else []
    choice = resolve(precision, read_cpuinfo() if precision == "auto" else "", gpus)
    keras.config.set_dtype_policy(choice.policy)
    log.info("precision %s (%s)", choice.policy, choice.reason)
    return choice.policy


def build_optimizer(cfg: ModelConfig, precision: str | None = None) -> keras.optimizers.Optimizer:
    """Adam at ``cfg.learning_rate``; wrapped in a ``LossScaleOptimizer`` for ``mixed_float16``.

    ``precision`` is a resolved policy (``apply``'s answer); None means the global policy now in
    effect. Only float16 needs loss scaling: bfloat16 has float32's exponent range, and a loss
    scale there would only cost a finiteness check per step. See the module docstring for how a
    custom training step must use the wrapped optimizer.
    """
    policy = precision or keras.config.dtype_policy().name
    if policy not in POLICIES:
        msg = f"unknown precision {policy!r}; expected one of {', '.join(POLICIES)} (resolve 'auto' with apply())"
        raise ValueError(msg)
    adam = keras.optimizers.Adam(learning_rate=cfg.learning_rate)
    if policy == "mixed_float16":
        return keras.optimizers.LossScaleOptimizer(adam)
    return adam
