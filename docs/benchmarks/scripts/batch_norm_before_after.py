"""Keras's batch normalisation against the fused one (learn/batch_norm.py), interleaved.

Each measurement is its own process (a process's peak RSS only rises), alternating keras, fused,
keras, fused ... for ``rounds`` rounds. Both build the trainer's U-Net with the default
``trainer.model`` and ``trainer.pipeline`` settings (base 16, depth 3, 128 px, batch 16, the
host's precision policy, resolved like the trainer does) from the same seed; the Keras variant is
``plain_copy`` of the fused model, so both start from identical weights. Each trains one traced
step, then ``steps`` timed steps on one fixed batch of real decoded JPEG/PNG pets (the bench's
synthetic records). Reported per run: seconds per step (median), VmHWM over the RSS before the
first step (the step's own memory), and the losses, which must agree to rounding.

    TF_CPP_MIN_LOG_LEVEL=2 python docs/benchmarks/scripts/batch_norm_before_after.py 3 20 > out.json
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time


def _status(key: str) -> float:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{key}:\s+(\d+)", f.read()).group(1)) / 1024  # type: ignore[union-attr]


def one(variant: str, steps: int) -> dict[str, object]:
    import ctypes

    ctypes.CDLL("libc.so.6").mallopt(-8, 2)  # M_ARENA_MAX = 2, as stream-trainer run sets it
    import keras
    import numpy as np
    import tensorflow as tf

    from stream_trainer.config import ModelConfig, PipelineConfig
    from stream_trainer.ingest import pipeline
    from stream_trainer.learn import precision
    from stream_trainer.learn.batch_norm import plain_copy
    from stream_trainer.learn.model import build_optimizer, build_unet
    from stream_trainer.workbench.bench.workload import encode_all, make_records

    cfg, pipe = ModelConfig(), PipelineConfig()
    policy = precision.apply(cfg.precision)
    keras.utils.set_random_seed(0)
    model = build_unet(pipe.image_size, cfg)
    if variant == "keras":
        model = plain_copy(model)
    optimizer = build_optimizer(cfg)
    values = encode_all(make_records(pipe.batch_size, 320, 0))
    batch = next(iter(pipeline.decode_values(values, pipe.image_size, pipe.batch_size)))
    images, masks = tf.cast(batch["image"], tf.float32) / 255.0, batch["mask"][..., 0]
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step() -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_fn(masks, model(images, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    before = _status("VmRSS")
    losses = [float(step())]
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        losses.append(float(step()))
        times.append(time.perf_counter() - t0)
    return {"variant": variant, "policy": policy, "step_s_median": round(statistics.median(times), 4),
            "step_s_mean": round(statistics.fmean(times), 4), "step_peak_mib": round(_status("VmHWM") - before, 1),
            "losses": [round(x, 5) for x in losses], "params": int(np.sum([np.prod(w.shape) for w in model.weights]))}


def main() -> None:
    if sys.argv[1] == "--one":
        print(json.dumps(one(sys.argv[2], int(sys.argv[3]))))
        return
    rounds, steps = int(sys.argv[1]), int(sys.argv[2])
    runs = []
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    for r in range(rounds):
        for variant in ("keras", "fused"):
            out = subprocess.run([sys.executable, __file__, "--one", variant, str(steps)], check=True,
                                 capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
            runs.append({"round": r, **json.loads(out.stdout.strip().splitlines()[-1])})
    summary = {}
    for variant in ("keras", "fused"):
        mine = [x for x in runs if x["variant"] == variant]
        summary[variant] = {"step_s_median": statistics.median(x["step_s_median"] for x in mine),
                            "step_peak_mib_median": statistics.median(x["step_peak_mib"] for x in mine)}
    summary["fused_speedup"] = round(summary["keras"]["step_s_median"] / summary["fused"]["step_s_median"], 3)
    summary["peak_saved_mib"] = round(summary["keras"]["step_peak_mib_median"]
                                      - summary["fused"]["step_peak_mib_median"], 1)
    print(json.dumps({"started": started, "load_average": os.getloadavg(), "rounds": rounds, "steps": steps,
                      "summary": summary, "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
