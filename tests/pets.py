"""Helpers for trainer tests: tiny settings and synthetic pets produced straight into topics."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from confluent_kafka import Producer

from producer.sources.synthetic import generate
from stream_trainer import config, wire


def tiny_settings(bootstrap: str, tmp_path: Path, topic: str, **overrides: Any) -> config.Settings:
    """A model and pipeline small enough for 2 CPU cores to train in seconds."""
    base: dict[str, Any] = {
        "kafka.bootstrap_servers": bootstrap,
        "kafka.connect_timeout_s": 10,
        "topics.train": topic,
        "topics.eval": f"{topic}-eval",
        "topics.dead_letter": f"{topic}-dlq",
        "trainer.source.group_id": f"{topic}-group",
        "trainer.pipeline.image_size": 32,
        "trainer.pipeline.batch_size": 8,
        "trainer.pipeline.shuffle_buffer": 16,
        "trainer.model.base_filters": 8,
        "trainer.model.depth": 2,
        "trainer.model.learning_rate": 0.003,
        # Named, not left to "auto" and the host's CPU flags: every host runs the same arithmetic.
        "trainer.model.precision": "mixed_bfloat16",
        "trainer.loop.log_every_s": 2,
        "trainer.loop.eval_every_steps": 0,
        "trainer.loop.eval_wait_s": 2,
        "trainer.loop.snapshot_dir": str(tmp_path / "snapshots"),
        "trainer.loop.tensorboard_dir": str(tmp_path / "tensorboard"),
        "trainer.checkpoint.dir": str(tmp_path / "checkpoints"),
        "trainer.checkpoint.export_dir": str(tmp_path / "export"),
        "trainer.checkpoint.every_steps": 10,
        "trainer.checkpoint.every_seconds": 0,
        "trainer.checkpoint.export_every_s": 0,
        "trainer.metrics.port": 0,
    }
    base.update({k.replace("__", "."): v for k, v in overrides.items()})
    return config.load(None, base)


def produce_pets(bootstrap: str, topic: str, count: int, *, seed: int = 0, size: int = 48,
                 eval_topic: str | None = None, eval_count: int = 0, partition: int | None = None) -> int:
    """Send ``count`` synthetic pets to ``topic`` (and ``eval_count`` more to ``eval_topic``)."""
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    kw = {} if partition is None else {"partition": partition}
    for i, rec in enumerate(generate(count + eval_count, seed=seed, min_size=size, max_size=size + 16,
                                     eval_fraction=0.0)):
        target = eval_topic if (eval_topic and i >= count) else topic
        p.produce(target, key=rec.image_id.encode(), value=wire.encode(rec, int(time.time() * 1000)), **kw)
    assert p.flush(30) == 0
    return count
