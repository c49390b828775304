"""Benchmark settings: the ``bench:`` section of a config file, next to the usual ``Settings``.

A bench config is an ordinary settings file (``kafka``, ``topics``, ``trainer`` ...) plus one
``bench`` section, so the pipeline, batch size and model measured are exactly the ones the
trainer would use with the same file. ``--quick`` swaps in tiny sizes that only prove the
command runs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


from stream_trainer import config
from stream_trainer.config import Settings
from stream_trainer.errors import ConfigError


@dataclass(frozen=True)
class FreshnessConfig:
    """Produce at a fixed share of training capacity and time each message until it is trained."""

    load: float = 0.5  # producer rate as a fraction of the measured in-memory training rate
    warmup_s: float = 10.0  # messages produced earlier are not counted
    seconds: float = 45.0  # messages produced in this window are counted
    # A message stays in the shuffle window a geometric number of steps (mean shuffle_buffer):
    # its p99 is ~4.6 x shuffle_buffer / rate seconds, on top of filling a batch (batch_size / rate).
    shuffle_buffer: int = 2


@dataclass(frozen=True)
class BenchConfig:
    messages: int = 3000  # per throughput run; every contender reads the same messages
    partitions: int = 4
    message_image_px: int = 320  # synthetic images are this many pixels square: ~54 KB messages
    seed: int = 0
    repeats: int = 3  # measured rounds; the median is reported
    warmup_round_messages: int = 600  # one discarded round first: connections, tracing, caches
    # Each timed read skips this many items at its head (the clock starts after them).
    warmup_messages: int = 200
    # Messages per hand-over for contenders 1 and 2: consume(num_messages=...), tfio batch(). Why
    # not 1000: 1000 x 54 KB exceeds librdkafka's 64 MB queue (queued.max.messages.kbytes), and
    # the fetcher then pauses for fetch.queue.backoff.ms (1 s), which measures the pause, not Kafka.
    consume_batch: int = 100
    train_warmup_steps: int = 3
    train_steps: int = 40
    freshness: FreshnessConfig = field(default_factory=FreshnessConfig)


# --quick: small enough for a test (< 60 s with TensorFlow's import), big enough for every code path.
QUICK = {
    "bench": {"messages": 60, "partitions": 2, "message_image_px": 96, "repeats": 1, "warmup_round_messages": 24,
              "warmup_messages": 4, "consume_batch": 16, "train_warmup_steps": 1, "train_steps": 3,
              "freshness": {"warmup_s": 1.0, "seconds": 3.0, "shuffle_buffer": 2}},
    "trainer": {"pipeline": {"image_size": 64, "batch_size": 4, "shuffle_buffer": 8},
                "model": {"base_filters": 4, "depth": 2}},
}


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out.get(key) or {}, value) if isinstance(value, dict) else value
    return out


def load(path: str | Path | None, *, quick: bool = False, overrides: dict[str, Any] | None = None,
         ) -> tuple[Settings, BenchConfig]:
    """Read ``path`` (or defaults), apply ``--quick`` and flag overrides, validate both halves.

    ``overrides`` maps dotted keys (``bench.messages``, ``kafka.bootstrap_servers``) to values;
    None values are ignored. Raises ConfigError naming the key at fault.
    """
    data = config.read_yaml_mapping(path) if path is not None else {}
    if quick:
        data = _merge(data, QUICK)
    for dotted, value in (overrides or {}).items():
        if value is not None:
            data = _merge(data, _nest(dotted.split("."), value))
    bench_data = data.pop("bench", None) or {}
    bench = config.build(BenchConfig, bench_data, "bench")
    settings = config.build(Settings, data).validate()
    return settings, validate(bench, settings)


def _nest(parts: list[str], value: Any) -> dict[str, Any]:
    return {parts[0]: _nest(parts[1:], value) if len(parts) > 1 else value}


def validate(bench: BenchConfig, settings: Settings) -> BenchConfig:
    """Reject sizes whose timed windows would be empty; return ``bench``."""
    p = settings.trainer.pipeline
    # A shuffled run is timed only while the buffer is full: after its fill, before its drain.
    need = bench.warmup_messages + 2 * p.shuffle_buffer + 2 * p.batch_size
    fresh = bench.freshness
    checks = [
        (bench.partitions >= 1, "bench.partitions", "must be >= 1"),
        (bench.messages >= max(need, 2 * bench.partitions), "bench.messages",
         f"must be >= {need} (warmup_messages + 2 x trainer.pipeline.shuffle_buffer + 2 x batch_size)"),
        (bench.repeats >= 1, "bench.repeats", "must be >= 1"),
        (16 <= bench.message_image_px <= 2048, "bench.message_image_px", "must be in [16, 2048]"),
        (bench.consume_batch >= 1, "bench.consume_batch", "must be >= 1"),
        (bench.train_steps >= 2 and bench.train_warmup_steps >= 1, "bench.train_steps",
         "must be >= 2 (and train_warmup_steps >= 1)"),
        (0 < fresh.load <= 1, "bench.freshness.load", "must be in (0, 1]"),
        (fresh.seconds > 0 and fresh.warmup_s >= 0, "bench.freshness.seconds", "must be > 0"),
        (fresh.shuffle_buffer >= 1, "bench.freshness.shuffle_buffer", "must be >= 1"),
    ]
    for ok, key, rule in checks:
        if not ok:
            msg = f"config key '{key}' {rule}"
            raise ConfigError(msg)
    return bench


def as_dict(obj: object) -> dict[str, Any]:
    """A frozen dataclass tree as plain data for the JSON report."""
    return dataclasses.asdict(obj)  # type: ignore[call-overload, no-any-return]
