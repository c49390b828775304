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

from stream_trainer import config, tfenv
from stream_trainer.config import Settings, SyntheticPhaseConfig
from stream_trainer.errors import ConfigError


@dataclass(frozen=True)
class FreshnessConfig:
    """Produce at a fixed share of training capacity and time each message until it is trained."""

    load: float = 0.5  # producer rate as a fraction of the measured in-memory training rate
    warmup_s: float = 10.0  # messages produced earlier are not counted
    seconds: float = 45.0  # messages produced in this window are counted


@dataclass(frozen=True)
class PrecisionConfig:
    """float32 against mixed bfloat16 (``precision.measure``): step rate, and IoU after the same images."""

    policies: list[str] = field(default_factory=lambda: ["float32", "mixed_bfloat16"])
    warmup_steps: int = 3
    steps: int = 8  # timed steps per policy and round
    rounds: int = 3
    train_images: int = 1500  # per seed and policy, for the IoU comparison
    eval_images: int = 200
    image_size: int = 64  # of the IoU comparison; the speed comparison uses trainer.pipeline's
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])


def _default_phases() -> list[SyntheticPhaseConfig]:
    # configs/producer.yaml's a and b: b inverts a's colour and texture cues, so training on b
    # alone forgets a (producer/sources/synthetic.py).
    return [SyntheticPhaseConfig("a", 2400, "blob", "warm", "cool-noise"),
            SyntheticPhaseConfig("b", 2400, "box", "cool", "warm-stripes")]


@dataclass(frozen=True)
class LearningConfig:
    """``--scenario learning`` (issue 14): forgetting on a drifting stream, with and without replay."""

    phases: list[SyntheticPhaseConfig] = field(default_factory=_default_phases)  # exactly two: A then B
    eval_fraction: float = 0.05  # of each phase's images, sent to the eval topic
    min_px: int = 64  # synthetic image sides drawn from [min_px, max_px]
    max_px: int = 96
    image_size: int = 64  # a tiny U-Net: the run has to fit a 2-core machine
    base_filters: int = 8
    depth: int = 3
    batch_size: int = 16
    eval_every_images: int = 192  # fresh images between evaluations of both phases
    patience: int = 3  # A has plateaued when this many evaluations in a row beat its best by < min_delta
    min_delta: float = 0.01
    cost_steps: int = 20  # replay's step cost: timed steps per round, with and without replay
    cost_rounds: int = 3


@dataclass(frozen=True)
class ScaleoutConfig:
    """``--workers 1,2`` (issue 12): ``stream-trainer run`` processes training one model together."""

    partitions: int = 4  # of the shared topic; every worker needs at least one
    messages: int = 4000  # produced once (distinct images repeat every ``distinct`` messages)
    distinct: int = 500
    message_image_px: int = 320
    warmup_steps: int = 5  # every worker has run this many steps before the warm-up clock starts
    warmup_s: float = 10.0
    window_s: float = 40.0  # the steady window the rates are taken over
    start_timeout_s: float = 240.0  # to join, build the model and reach warmup_steps


@dataclass(frozen=True)
class MemoryConfig:
    """``--scenario memory`` (issue 23): a trainer process's RSS through the phases of a real run."""

    partition_counts: list[int] = field(default_factory=lambda: [1, 4, 16, 64])  # the first P of one topic
    # Values of trainer.source.reader, each set explicitly in its runs' trainer config: every
    # reader this stack has (tensorflow-io only where it is installed), side by side.
    readers: list[str] = field(default_factory=lambda: [r for r in tfenv.READERS
                                                        if r != tfenv.TENSORFLOW_IO or tfenv.tensorflow_io_installed()])
    # Each partition holds this much before the trainer starts: more than librdkafka's read-ahead
    # (32 MiB by default, ingest/reader.py) plus what the run trains, so every queue can fill.
    backlog_mib_per_partition: float = 48.0
    # Partitions from this index on hold ``backlog_mib_beyond`` instead (64 x 48 MiB would be 3 GiB
    # on the broker): still several times what one of 64 partitions may hold ahead of decoding
    # (its read-ahead share and its intake share), so every bound of a 64-partition run fills too.
    backlog_full_partitions: int = 16
    backlog_mib_beyond: float = 12.0
    message_image_px: int = 320  # ~54 KB messages, like the throughput scenario's
    distinct: int = 200  # distinct images, repeated through the backlog
    eval_images: int = 256  # trainer.loop.eval_max_images' default: the eval cache at its default size
    steps: int = 20  # evaluation, checkpoint and export at this step (the baseline evaluation at step 0)
    sample_every_s: float = 0.25
    settle_s: float = 2.0  # sampled after the export, before SIGTERM
    start_timeout_s: float = 600.0  # from start to the export
    env: dict[str, str] = field(default_factory=dict)  # added to the trainer's environment (MALLOC_ARENA_MAX ...)


@dataclass(frozen=True)
class BenchConfig:
    messages: int = 3000  # per throughput run; every contender reads the same messages
    partition_counts: list[int] = field(default_factory=lambda: [1, 4, 16])  # one topic each, same messages
    partitions: int = 4  # the topic that training, freshness and RSS read (one of partition_counts)
    message_image_px: int = 320  # synthetic images are this many pixels square: ~54 KB messages
    seed: int = 0
    repeats: int = 3  # measured rounds; the median is reported
    warmup_round_messages: int = 600  # one discarded round first: connections, tracing, caches (0: none)
    # Each timed read skips this many items at its head (the clock starts after them).
    warmup_messages: int = 200
    # Messages per hand-over of the raw consumer and the tfio source: consume(num_messages=...),
    # batch(). Why not 1000: 1000 x 54 KB exceeds librdkafka's 64 MB queue
    # (queued.max.messages.kbytes), and the fetcher then pauses for fetch.queue.backoff.ms (1 s),
    # which measures the pause, not Kafka.
    consume_batch: int = 100
    train_warmup_steps: int = 3
    train_steps: int = 40
    freshness: FreshnessConfig = field(default_factory=FreshnessConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    learning: LearningConfig = field(default_factory=LearningConfig)
    scaleout: ScaleoutConfig = field(default_factory=ScaleoutConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)


# --quick: small enough for a test, big enough for every code path.
QUICK = {
    "bench": {"messages": 64, "partition_counts": [1, 2], "partitions": 2, "message_image_px": 96, "repeats": 1,
              "warmup_round_messages": 0, "warmup_messages": 4, "consume_batch": 16, "train_warmup_steps": 1,
              "train_steps": 3, "freshness": {"warmup_s": 0.5, "seconds": 2.0},
              "precision": {"warmup_steps": 1, "steps": 1, "rounds": 1, "train_images": 16, "eval_images": 16,
                            "image_size": 32, "seeds": [0]},
              "learning": {"phases": [{"name": "a", "images": 120, "shape": "blob", "pet_colour": "warm",
                                       "background": "cool-noise"},
                                      {"name": "b", "images": 120, "shape": "box", "pet_colour": "cool",
                                       "background": "warm-stripes"}],
                           "eval_fraction": 0.1, "min_px": 32, "max_px": 40, "image_size": 32, "base_filters": 4,
                           "depth": 2, "batch_size": 8, "eval_every_images": 32, "patience": 1, "cost_steps": 2,
                           "cost_rounds": 1},
              "scaleout": {"partitions": 2, "messages": 6000, "distinct": 40, "message_image_px": 32,
                           "warmup_steps": 2, "warmup_s": 0.0, "window_s": 2.0},
              # One trainer: each costs a TensorFlow import, a traced step and an export (~100 s on 2 busy cores).
              "memory": {"partition_counts": [2], "readers": [tfenv.default_reader()],
                         "backlog_mib_per_partition": 1.0, "message_image_px": 96, "distinct": 20, "eval_images": 8,
                         "steps": 2, "sample_every_s": 0.2, "settle_s": 0.5}},
    # decode_group 8: a 64-message read must still arrive in several groups for a timed window.
    "trainer": {"pipeline": {"image_size": 32, "batch_size": 4, "decode_group": 8},
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
    # The clock starts after warmup_messages and stops before the last two batches.
    need = bench.warmup_messages + 4 * p.batch_size
    fresh, learn, scale, mem = bench.freshness, bench.learning, bench.scaleout, bench.memory
    counts = bench.partition_counts
    checks = [
        (bool(counts) and all(n >= 1 for n in counts) and len(set(counts)) == len(counts),
         "bench.partition_counts", "must be distinct partition counts >= 1"),
        (bench.partitions in counts, "bench.partitions", "must be one of bench.partition_counts"),
        (bench.messages >= max(need, 2 * max(counts or [1])), "bench.messages",
         f"must be >= {need} (warmup_messages + 4 x trainer.pipeline.batch_size) and >= 2 x the most partitions"),
        (bench.repeats >= 1, "bench.repeats", "must be >= 1"),
        (16 <= bench.message_image_px <= 2048, "bench.message_image_px", "must be in [16, 2048]"),
        (bench.consume_batch >= 1, "bench.consume_batch", "must be >= 1"),
        (bench.train_steps >= 2 and bench.train_warmup_steps >= 1, "bench.train_steps",
         "must be >= 2 (and train_warmup_steps >= 1)"),
        (0 < fresh.load <= 1, "bench.freshness.load", "must be in (0, 1]"),
        (fresh.seconds > 0 and fresh.warmup_s >= 0, "bench.freshness.seconds", "must be > 0"),
        (len(learn.phases) == 2 and learn.phases[0].name != learn.phases[1].name, "bench.learning.phases",
         "must name exactly two phases (A, then B)"),
        (learn.image_size % 2 ** learn.depth == 0, "bench.learning.image_size", "must be a multiple of 2**depth"),
        (learn.eval_every_images >= learn.batch_size >= 1, "bench.learning.eval_every_images",
         "must be >= bench.learning.batch_size >= 1"),
        (learn.patience >= 1, "bench.learning.patience", "must be >= 1"),
        (scale.partitions >= 1 and scale.messages >= scale.distinct >= 1, "bench.scaleout.messages",
         "must be >= bench.scaleout.distinct >= 1"),
        (scale.window_s > 0, "bench.scaleout.window_s", "must be > 0"),
        (bool(mem.partition_counts) and all(n >= 1 for n in mem.partition_counts)
         and len(set(mem.partition_counts)) == len(mem.partition_counts), "bench.memory.partition_counts",
         "must be distinct partition counts >= 1"),
        (bool(mem.readers) and len(set(mem.readers)) == len(mem.readers), "bench.memory.readers",
         "must name distinct readers (values of trainer.source.reader)"),
        (mem.backlog_mib_per_partition > 0 and mem.distinct >= 1 and mem.eval_images >= 1,
         "bench.memory.backlog_mib_per_partition", "must be > 0 (and distinct, eval_images >= 1)"),
        (mem.backlog_full_partitions >= 1 and mem.backlog_mib_beyond > 0, "bench.memory.backlog_mib_beyond",
         "must be > 0 (and backlog_full_partitions >= 1)"),
        (mem.steps >= 1 and mem.sample_every_s > 0, "bench.memory.steps", "must be >= 1 (and sample_every_s > 0)"),
    ]
    for ok, key, rule in checks:
        if not ok:
            msg = f"config key '{key}' {rule}"
            raise ConfigError(msg)
    return bench


def as_dict(obj: object) -> dict[str, Any]:
    """A frozen dataclass tree as plain data for the JSON report."""
    return dataclasses.asdict(obj)  # type: ignore[call-overload]
