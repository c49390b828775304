"""Evaluation runs the model traced: the same answers as calling it, at a fraction of the memory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import tensorflow as tf

from stream_trainer.config import ModelConfig
from stream_trainer.learn.model import build_unet
from stream_trainer.quality.evaluate import classifier, confusion

ROOT = Path(__file__).resolve().parents[1]


def test_the_classifier_answers_as_the_model_called_eagerly_with_one_trace_for_every_batch_size() -> None:
    model = build_unet(32, ModelConfig(base_filters=4, depth=2))
    classify = classifier(model)
    rng = np.random.default_rng(0)
    for n in (5, 3, 5):
        images = tf.constant(rng.integers(0, 256, (n, 32, 32, 3)), tf.uint8)
        eager = tf.argmax(model(tf.cast(images, tf.float32) / 255.0, training=False), axis=-1)
        assert np.array_equal(classify(images).numpy(), eager.numpy())
    assert classify.experimental_get_tracing_count() == 1
    masks = tf.constant(rng.integers(0, 3, (3, 32, 32, 1)), tf.uint8)
    cm, n = confusion(classify, [{"image": images[:3], "mask": masks}])
    assert n == 3 and cm.sum() == 3 * 32 * 32


# The trainer's defaults (128 px, batch 16, 256 eval images, bfloat16 where the CPU has it), in a
# fresh process so that no earlier test's freed memory is reused.
_EVALUATION = textwrap.dedent("""
    import re, sys
    from producer.sources.synthetic import generate
    from stream_trainer import wire
    from stream_trainer.config import ModelConfig
    from stream_trainer.learn import precision
    from stream_trainer.learn.model import build_unet
    from stream_trainer.quality.evaluate import EvalMessage, Evaluator

    def rss_mib():
        return int(re.search(r"VmRSS:\\s+(\\d+)", open("/proc/self/status").read()).group(1)) / 1024

    precision.apply("auto")
    model = build_unet(128, ModelConfig())
    values = [wire.encode(r, 0) for r in generate(256, seed=1, min_size=128, max_size=256, eval_fraction=0.0)]
    evaluator = Evaluator(model, [EvalMessage(0, i, v) for i, v in enumerate(values)], 128, "", 16)
    before = rss_mib()
    result = evaluator.evaluate(0)
    print(result.images, round(rss_mib() - before))
""")


def test_an_evaluation_holds_a_fraction_of_what_the_model_called_eagerly_held() -> None:
    if not os.path.exists("/proc/self/status"):
        return
    out = subprocess.run([sys.executable, "-c", _EVALUATION], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"},
                         timeout=300, check=True)
    images, grew_mib = map(int, out.stdout.split())
    assert images == 256
    # Measured: +60 MiB traced, +279 with the model called eagerly on each batch.
    assert grew_mib < 150, f"the first evaluation raised RSS by {grew_mib} MiB"
