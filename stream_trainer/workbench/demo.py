"""``make demo``: the real main job on the embedded default, bounded in time.

A local Kafka 3.9.1 broker (or ``KAFKA_BOOTSTRAP``), the synthetic pet producer replaying
forever at a fixed rate, and the trainer for ``seconds``; then where everything landed and
whether the model learned (eval mean IoU at the end versus the untrained model's).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path

from stream_trainer import config
from stream_trainer.app import run_trainer
from stream_trainer.kafka import Cluster
from stream_trainer.workbench.broker import LocalBroker

log = logging.getLogger(__name__)
DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def _wait_for_eval_set(cluster: Cluster, topic: str, expected: int, timeout_s: float) -> int:
    """Let the producer finish its eval split so every evaluation scores the same images."""
    deadline = time.monotonic() + timeout_s
    count = 0
    while time.monotonic() < deadline:
        marks = cluster.watermarks(topic, cluster.partitions(topic))
        count = sum(m.high - m.low for m in marks.values())
        if count >= expected:
            break
        time.sleep(0.5)
    return count


def main(seconds: float, workdir: Path) -> int:
    from producer import app as producer_app

    external = os.environ.get("KAFKA_BOOTSTRAP")
    broker = None
    if external:
        bootstrap = external
    else:
        shutil.rmtree(workdir, ignore_errors=True)  # a fresh broker: old checkpoints would point past its logs
        broker = LocalBroker(workdir / "kafka")
        bootstrap = broker.start()
    try:
        settings = config.load(DEMO_CONFIG, {"kafka.bootstrap_servers": bootstrap,
                                             "trainer.loop.max_seconds": seconds})
        cluster = Cluster(settings.kafka)
        topics = settings.topics
        cluster.ensure_topics({topics.train: topics.partitions, topics.eval: 1, topics.dead_letter: 1})

        stop_producer = threading.Event()
        producer = threading.Thread(target=producer_app.run, args=(settings,), kwargs={"stop": stop_producer},
                                    name="producer", daemon=True)
        producer.start()
        src = settings.producer.source
        expected_eval = round(src.count * src.eval_fraction)
        got = _wait_for_eval_set(cluster, topics.eval, expected_eval, timeout_s=60)
        log.info("demo: broker %s, %d eval images ready; training for %.0f s (metrics on :%d)",
                 bootstrap, got, seconds, settings.trainer.metrics.port)
        try:
            summary = run_trainer(settings, handle_signals=True)
        finally:
            stop_producer.set()
            producer.join(30)
        cluster.close()
    finally:
        if broker is not None:
            broker.stop()

    t = settings.trainer
    first, last = (summary.evals[0], summary.evals[-1]) if summary.evals else (None, None)
    print("\n=== stream-trainer demo ===")
    print(f"trained steps {summary.start_step} -> {summary.step} ({summary.images} fresh images, "
          f"{summary.replayed} replayed), "
          f"{summary.checkpoints} checkpoints, stopped by {summary.stopped_by}")
    if first and last:
        print(f"eval mean IoU {first.mean_iou:.3f} (step {first.step}) -> {last.mean_iou:.3f} (step {last.step}); "
              f"pixel accuracy {first.pixel_accuracy:.3f} -> {last.pixel_accuracy:.3f}")
    print(f"checkpoints (weights + optimizer + offsets): {Path(t.checkpoint.dir).resolve()}")
    print(f"exported model (TF Serving layout):          {Path(t.checkpoint.export_dir, 'latest').resolve()}")
    print(f"eval snapshots (image | truth | prediction): {Path(t.loop.snapshot_dir).resolve()}")
    print(f"metrics were served at http://127.0.0.1:{t.metrics.port}/metrics during the run")
    if t.loop.tensorboard_dir:
        print(f"TensorBoard (loss, scores, eval pictures, config): {sys.executable} -m tensorboard.main "
              f"--logdir {Path(t.loop.tensorboard_dir).resolve()} --host 127.0.0.1 --port 6006, "
              "then open http://127.0.0.1:6006")
    learned = bool(first and last and last.mean_iou > first.mean_iou + 0.05)
    print("learning: " + ("yes, eval mean IoU rose" if learned else "NO: eval mean IoU did not rise clearly"))
    return 0 if learned else 1
