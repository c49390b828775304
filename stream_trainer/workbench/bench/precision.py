"""float32 against mixed precision on this machine: training speed, and the accuracy it buys.

Speed: the trainer's step (``step.make_replica_step``: forward, sparse cross-entropy on logits,
backward, Adam, with the loss scaling ``precision``'s docstring prescribes) on random batches, one
model per policy built up front,
timed in interleaved rounds with the order alternating, so background load hits every policy
alike; the median round counts. Accuracy: every policy starts from the same initial weights,
trains on the same synthetic pets in the same order (decoded once by the trainer's pipeline
code, from memory: no Kafka), then is scored on the same held-out pets (mean IoU, as the
trainer's evaluation computes it).

``python -m stream_trainer.workbench.bench.precision [--quick]`` prints the result as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from typing import Any

import keras
import tensorflow as tf

from producer.sources.synthetic import generate
from stream_trainer import wire
from stream_trainer.config import ModelConfig
from stream_trainer.ingest import pipeline
from stream_trainer.learn import precision as prec
from stream_trainer.learn.model import build_unet
from stream_trainer.learn.step import make_replica_step
from stream_trainer.quality.evaluate import classifier, confusion, scores
from stream_trainer.workbench.bench.timing import round_order

Step = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def train_step(model: keras.Model, optimizer: keras.optimizers.Optimizer, image_size: int) -> Step:
    """The trainer's step (``make_replica_step``, every row fresh and counted, no flips) on uint8 rows."""
    optimizer.build(model.trainable_variables)  # before tracing: see precision.py
    replica = make_replica_step(model, optimizer, image_size, flip=False)

    def step(images: tf.Tensor, masks: tf.Tensor) -> tf.Tensor:
        n = tf.shape(images)[0]
        out = replica(images, masks, tf.ones([n]), tf.ones([n], tf.bool), tf.cast(n, tf.float32))
        return out["loss"]

    compiled: Step = tf.function(step)
    return compiled


def _build(policy: str, image_size: int, cfg: ModelConfig) -> tuple[keras.Model, Step]:
    keras.config.set_dtype_policy(policy)
    model = build_unet(image_size, cfg)
    return model, train_step(model, prec.build_optimizer(cfg, policy), image_size)


def _pets(count: int, seed: int, image_size: int) -> list[dict[str, tf.Tensor]]:
    """Batches of 16 synthetic pets (uint8 images and masks), decoded by the trainer's pipeline code."""
    values = [wire.encode(r, 0) for r in generate(count, seed=seed, min_size=image_size,
                                                  max_size=image_size * 2, eval_fraction=0.0)]
    return [{"image": b["image"], "mask": b["mask"]} for b in pipeline.decode_values(values, image_size, 16)]


def speed(policies: Sequence[str], image_size: int, batch_size: int, cfg: ModelConfig, warmup_steps: int,
          steps: int, rounds: int) -> dict[str, dict[str, Any]]:
    """Images per second of each policy's training step: the median of interleaved rounds."""
    images = tf.cast(tf.random.uniform([batch_size, image_size, image_size, 3], maxval=256, dtype=tf.int32), tf.uint8)
    masks = tf.cast(tf.random.uniform([batch_size, image_size, image_size, 1], maxval=3, dtype=tf.int32), tf.uint8)
    runs: dict[str, list[float]] = {p: [] for p in policies}
    built = {p: _build(p, image_size, cfg)[1] for p in policies}
    for step in built.values():
        for _ in range(warmup_steps):  # tracing and oneDNN's first-call primitive creation
            float(step(images, masks))
    for r in range(rounds):
        for policy in round_order(policies, r):
            step = built[policy]
            t0 = time.perf_counter()
            for _ in range(steps):
                loss = step(images, masks)
            float(loss)  # wait for the last step
            runs[policy].append(steps * batch_size / (time.perf_counter() - t0))
    return {p: {"images_per_s": statistics.median(v), "rounds": [round(x, 2) for x in v]} for p, v in runs.items()}


def accuracy(policies: Sequence[str], image_size: int, cfg: ModelConfig, train_images: int, eval_images: int,
             seed: int) -> dict[str, dict[str, Any]]:
    """Mean IoU of each policy after one pass over the same ``train_images`` pets, same start."""
    train = _pets(train_images, seed, image_size)
    held_out = tf.data.Dataset.from_tensor_slices(
        {k: tf.concat([b[k] for b in _pets(eval_images, 1000 + seed, image_size)], 0) for k in ("image", "mask")}
    ).batch(16)
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(seed)
    start = build_unet(image_size, cfg).get_weights()  # the same initial numbers for every policy
    out: dict[str, dict[str, Any]] = {}
    for policy in policies:
        model, step = _build(policy, image_size, cfg)
        model.set_weights(start)
        t0 = time.perf_counter()
        losses = [float(step(b["image"], b["mask"])) for b in train]
        elapsed = time.perf_counter() - t0
        cm, n = confusion(classifier(model), held_out)
        miou, acc = scores(cm)
        out[policy] = {"mean_iou": round(miou, 4), "pixel_accuracy": round(acc, 4), "eval_images": n,
                       "trained_images": sum(int(b["image"].shape[0]) for b in train),
                       "last_loss_mean_of_10": round(statistics.fmean(losses[-10:]), 4),
                       "train_seconds": round(elapsed, 1)}
    return out


def measure(policies: Sequence[str] = ("float32", "mixed_bfloat16"), *, image_size: int = 128, batch_size: int = 16,
            model: ModelConfig | None = None, warmup_steps: int = 3, steps: int = 8, rounds: int = 3,
            accuracy_image_size: int = 64, accuracy_model: ModelConfig | None = None, train_images: int = 1500,
            eval_images: int = 200, seeds: Sequence[int] = (0, 1, 2)) -> dict[str, Any]:
    """Speed and accuracy of each dtype policy on this machine, as a JSON-ready dict.

    Defaults: the trainer's default U-Net (``ModelConfig()``) at 128 px, batch 16 for speed; the
    same U-Net at 64 px, 1,500 training and 200 held-out pets for accuracy, once per seed (the
    seed picks the initial weights and the pets; one run's gap between policies is mostly the
    divergence of two chaotic trajectories, so only a gap beyond the seeds' spread means
    anything). Leaves the global dtype policy as it found it.
    """
    model = model or ModelConfig()
    accuracy_model = accuracy_model or model
    previous = keras.config.dtype_policy().name
    try:
        fast = speed(policies, image_size, batch_size, model, warmup_steps, steps, rounds)
        runs = [accuracy(policies, accuracy_image_size, accuracy_model, train_images, eval_images, seed)
                for seed in seeds] if train_images else []
    finally:
        keras.config.set_dtype_policy(previous)
    base = policies[0]
    # Each round's ratio compares runs seconds apart; under a shared machine's drifting load it is
    # steadier than the ratio of the medians.
    ratios = {p: [round(x / b, 3) for x, b in zip(fast[p]["rounds"], fast[base]["rounds"], strict=True)]
              for p in policies}
    cpuinfo = prec.read_cpuinfo()
    return {
        "speed": {"image_size": image_size, "batch_size": batch_size, "model": asdict(model), "steps": steps,
                  "rounds": rounds, **{p: {**v, f"vs_{base}_per_round": ratios[p],
                                           f"vs_{base}_median": statistics.median(ratios[p])}
                                       for p, v in fast.items()}},
        "accuracy": {"image_size": accuracy_image_size, "model": asdict(accuracy_model), "seeds": list(seeds),
                     **{p: {"mean_iou_median": statistics.median(r[p]["mean_iou"] for r in runs),
                            "per_seed": [r[p] for r in runs]} for p in policies if runs}},
        "auto_here": asdict(prec.resolve("auto", cpuinfo, prec.visible_gpus())),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "bf16_flags": sorted(prec.cpu_flags(cpuinfo).intersection(prec.CPU_BF16_FLAGS)),
                    "gpus": [asdict(g) for g in prec.visible_gpus()], "tensorflow": tf.__version__,
                    "keras": keras.__version__},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that the measurement runs")
    p.add_argument("--policies", default="float32,mixed_bfloat16")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--train-images", type=int, default=1500)
    p.add_argument("--accuracy-image-size", type=int, default=64)
    p.add_argument("--seeds", default="0,1,2")
    args = p.parse_args()
    kw: dict[str, Any] = {"rounds": args.rounds, "steps": args.steps, "train_images": args.train_images,
                          "accuracy_image_size": args.accuracy_image_size,
                          "seeds": tuple(int(x) for x in args.seeds.split(","))}
    if args.quick:
        tiny = replace(ModelConfig(), base_filters=4, depth=2)
        kw = {"image_size": 32, "model": tiny, "steps": 2, "rounds": 1, "warmup_steps": 1, "train_images": 32,
              "eval_images": 16, "accuracy_image_size": 32, "seeds": (0,)}
    print(json.dumps(measure(tuple(args.policies.split(",")), **kw), indent=1))


if __name__ == "__main__":
    main()
