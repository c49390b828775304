"""What an export needs over training: the SavedModel write and the ``model.keras`` save, apart.

One process, the default U-Net (128 px, mixed bfloat16), five training steps on one random batch
of 16, then three rounds of: the export's two writes into a temporary folder, each followed by
the peak RSS over the RSS before it (a sampler thread reads /proc every 5 ms), then
``tfenv.release_memory()`` as the exporter does, then five more steps. Run (2026-12-06, 15:10 UTC)::

    PYTHONPATH=. python docs/benchmarks/scripts/export_memory_probe.py

Linux only (/proc/self/status).
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import time
from pathlib import Path

from stream_trainer import tfenv

tfenv.limit_malloc_arenas()
tfenv.leave_out_plotting()

import keras  # noqa: E402 - after the trainer's process settings, as in `stream-trainer run`
import tensorflow as tf  # noqa: E402

from stream_trainer.config import ModelConfig  # noqa: E402
from stream_trainer.learn import precision  # noqa: E402
from stream_trainer.learn.batch_norm import plain_copy  # noqa: E402
from stream_trainer.learn.model import build_optimizer, build_unet  # noqa: E402
from stream_trainer.serve.export import serving_archive  # noqa: E402


def rss_mib() -> float:
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024  # type: ignore[union-attr]


def main() -> None:
    precision.apply("mixed_bfloat16")
    model, optimizer = build_unet(128, ModelConfig()), build_optimizer(ModelConfig())
    x = tf.random.uniform((16, 128, 128, 3))
    y = tf.random.uniform((16, 128, 128), 0, 3, tf.int32)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step() -> None:
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=True))
        optimizer.apply_gradients(zip(tape.gradient(value, model.trainable_variables), model.trainable_variables,
                                      strict=True))

    peak = [0.0]

    def sample() -> None:
        while True:
            peak[0] = max(peak[0], rss_mib())
            time.sleep(0.005)

    threading.Thread(target=sample, daemon=True).start()
    for _ in range(5):
        step()
    for i in range(3):
        folder = Path(tempfile.mkdtemp())
        base = peak[0] = rss_mib()
        serving_archive(model, 128).write_out(str(folder / "savedmodel"), verbose=False)
        saved = peak[0] - base
        peak[0] = rss_mib()
        plain_copy(model).save(folder / "model.keras")
        keras_save = peak[0] - base
        shutil.rmtree(folder)
        tfenv.release_memory()
        print(f"export {i}: RSS before {base:.0f} MiB; SavedModel write peak +{saved:.0f}, model.keras save peak "
              f"+{keras_save:.0f}; after the release {rss_mib() - base:+.0f}")
        for _ in range(5):
            step()


if __name__ == "__main__":
    main()
