"""Typed settings for the producer and the trainer, loaded from YAML and validated in one place.

Defaults live in the dataclasses. A YAML file overrides any subset; unknown keys and wrong
types fail at start with the full key path (``trainer.loop.max_stepz``), never later.
``${VAR}`` and ``${VAR:-default}`` inside strings are expanded from the environment so that
secrets (SASL passwords) stay out of files.
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from stream_trainer import tfenv
from stream_trainer.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class KafkaConfig:
    """How every client reaches the cluster."""

    bootstrap_servers: str = "127.0.0.1:9092"
    # librdkafka properties passed to every client we create (security.protocol, sasl.*, ssl.*).
    client: dict[str, str] = field(default_factory=dict)
    # How long to wait for the first metadata answer before calling the broker unreachable.
    connect_timeout_s: float = 15.0


@dataclass(frozen=True)
class TopicsConfig:
    train: str = "pets"
    eval: str = "pets-eval"
    dead_letter: str = "pets-dlq"
    # Used only when a program creates a missing topic.
    partitions: int = 4
    # -1: the cluster's default.replication.factor (3 on a production cluster, 1 on a dev broker).
    replication_factor: int = -1


@dataclass(frozen=True)
class MetricsConfig:
    host: str = "0.0.0.0"
    port: int = 9100  # 0 disables the endpoint


# The looks a synthetic phase can take (producer/sources/synthetic.py draws each).
SYNTHETIC_SHAPES = ("blob", "box", "star")
SYNTHETIC_PET_COLOURS = ("warm", "cool", "green")
SYNTHETIC_BACKGROUNDS = ("cool-noise", "cool-stripes", "warm-noise", "warm-stripes")
# A phase name becomes part of image ids and of the wire ``source`` tag (``synthetic:phase=NAME``),
# so it must not contain the tag's separators.
SYNTHETIC_PHASE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,31}")


@dataclass(frozen=True)
class SyntheticPhaseConfig:
    """One stretch of a drifting synthetic stream; the defaults are the phase-less look."""

    name: str = ""
    images: int = 0  # generated per pass; eval_fraction of them go to the eval topic
    shape: str = "blob"  # blob | box | star
    pet_colour: str = "warm"  # warm | cool | green (saturated)
    background: str = "cool-noise"  # cool-noise | cool-stripes | warm-noise | warm-stripes


@dataclass(frozen=True)
class ProducerSourceConfig:
    kind: str = "synthetic"  # synthetic | dir | tfds
    path: str = ""  # dir: the folder holding images/ and annotations/trimaps/
    count: int = 200  # synthetic: images per split-less pass (unused when phases are set)
    seed: int = 0
    eval_fraction: float = 0.1  # synthetic (and dir without split lists): share sent to the eval topic
    min_size: int = 160  # synthetic image side range, in pixels
    max_size: int = 320
    jpeg_quality: int = 90
    # synthetic: a drifting stream. Each pass sends every phase in order (phase 1's train images,
    # then phase 2's, ...), so passes > 1 cycle back to the first phase; empty = one look, count images.
    phases: list[SyntheticPhaseConfig] = field(default_factory=list)


@dataclass(frozen=True)
class ProducerConfig:
    source: ProducerSourceConfig = field(default_factory=ProducerSourceConfig)
    rate: float = 0.0  # messages per second, 0 = as fast as possible
    passes: int = 1  # 0 = forever
    shuffle: bool = True
    partitioner: str = "key_hash"  # key_hash | round_robin
    compression: str = "none"  # none | gzip | snappy | lz4 | zstd
    message_max_bytes: int = 1_000_000
    create_topics: bool = True
    send_eval: bool = True
    metrics: MetricsConfig = field(default_factory=lambda: MetricsConfig(port=9101))


@dataclass(frozen=True)
class SourceConfig:
    group_id: str = "stream-trainer"
    auto_offset_reset: str = "earliest"  # earliest | latest, when neither checkpoint nor group has an offset
    # Explicit partitions to read; empty = this worker's share (trainer.cluster) of every partition.
    partitions: list[int] = field(default_factory=list)
    # Which library reads the training data (docs/operations.md, "Choosing the reader"):
    # tensorflow-io (one KafkaDataset per partition) | confluent-kafka (one consumer for all of the
    # worker's partitions). Empty = tensorflow-io where it is installed, else confluent-kafka.
    reader: str = ""
    # librdkafka poll timeout of the reader; bounds how stale a shutdown check can be.
    poll_timeout_ms: int = 1000
    # How often the topic's partition count is re-read: added partitions are trained without a restart.
    metadata_refresh_s: float = 60.0
    # A saved position beyond a partition's log end (topic recreated, checkpoint from another
    # cluster): fail (one clear error, exit 2) | earliest | latest.
    on_offset_reset: str = "fail"
    # A partition reader that fails is restarted where it stopped reading; more than
    # max_restarts failures within restart_window_s end the daemon (exit 2) for a supervisor.
    max_restarts: int = 5
    restart_window_s: float = 300.0
    # tfio waits instead of failing on some faults (a recreated topic, revoked credentials): a
    # reader that hands on nothing this long while messages wait in Kafka is replaced (the
    # confluent-kafka reader's consumer is re-created).
    stall_timeout_s: float = 60.0
    # Raw messages read ahead of decoding (a bounded queue: back pressure on Kafka reads).
    queue_capacity: int = 512

    def chosen_reader(self) -> str:
        """``reader``, or this stack's default where it is empty (``tfenv.default_reader``)."""
        return self.reader or tfenv.default_reader()


@dataclass(frozen=True)
class PipelineConfig:
    image_size: int = 128
    batch_size: int = 16
    # A partial batch of fresh messages is trained once its oldest message has waited this long.
    max_batch_wait_ms: int = 200
    # 0 = fresh messages are trained oldest first. N > 0 = each batch draws its fresh messages at
    # random from up to N waiting ones (never past max_batch_wait_ms); replay decorrelates anyway.
    shuffle_buffer: int = 0
    # Messages decoded together at most (one "what has arrived" group); decode threads: 0 = AUTOTUNE.
    decode_group: int = 64
    decode_threads: int = 0
    # Height x width an image or mask may declare in its header (checked before decoding); more is
    # a dead letter (reason too_large), never an out-of-memory: a 30 KB PNG can declare 65535 x
    # 65535 (12 GiB decoded). 4096 x 4096 is several times any real photo a 1 MB message carries
    # (Oxford-IIIT Pet photos are about 500 x 375); each decode in flight then holds at most 48 MiB.
    # 0 = no limit.
    max_pixels: int = 4096 * 4096
    flip: bool = True
    seed: int = 0


@dataclass(frozen=True)
class ReplayConfig:
    """The replay store: past fresh examples mixed into every batch (docs/learning.md)."""

    size_mib: float = 64.0  # 0 disables replay
    policy: str = "reservoir"  # reservoir (uniform over the whole stream) | fifo (most recent)
    # Share of each batch reserved for replayed examples when fresh ones could fill it.
    fraction: float = 0.25
    seed: int = 0


@dataclass(frozen=True)
class ClusterConfig:
    """Several trainer processes training one model (tf.distribute MultiWorkerMirroredStrategy)."""

    # host:port of every worker, the same list in the same order on every worker; empty = alone.
    workers: list[str] = field(default_factory=list)
    index: int = 0  # this worker's place in ``workers``; worker 0 is the chief
    # A worker with no fresh batch within this time joins the step with a zero-weight batch.
    max_wait_ms: int = 100
    # A peer that answers no collective for this long is declared lost: every worker exits non-zero.
    peer_timeout_s: float = 60.0
    # How long a starting worker waits for every other worker to join before it exits naming the
    # missing ones (a supervisor starting the job staggered needs at most this much slack).
    join_timeout_s: float = 300.0
    # Where non-chief workers write the checkpoint copies MultiWorkerMirroredStrategy requires.
    scratch_dir: str = ""
    # trainer.model.learning_rate is for one worker's batch; N workers step with N times the
    # batch and fewer steps per image: sqrt multiplies the rate by sqrt(N) (Adam's rule of thumb),
    # linear by N (SGD's), none keeps it.
    learning_rate_scaling: str = "sqrt"


@dataclass(frozen=True)
class ModelConfig:
    base_filters: int = 16
    depth: int = 3
    learning_rate: float = 1e-3
    # auto | float32 | mixed_bfloat16 | mixed_float16; auto picks what this machine runs fastest
    # without losing accuracy (precision.py says how), resolved once at start.
    precision: str = "auto"


@dataclass(frozen=True)
class LoopConfig:
    max_steps: int = 0  # 0 = run until stopped
    max_seconds: float = 0.0  # 0 = run until stopped
    log_every_s: float = 5.0
    eval_every_steps: int = 200
    eval_max_images: int = 256
    eval_wait_s: float = 10.0  # how long to wait for the eval topic before training without it
    snapshot_dir: str = "runs/snapshots"
    # The chief's TensorBoard event files (loop/tensorboard.py); "" = none.
    tensorboard_dir: str = "runs/tensorboard"
    # Eval pictures in TensorBoard at most this often (the scores go in at every evaluation): a
    # set of four 96-px pictures is ~90 KB, too much at every evaluation for weeks. 0 = every one.
    tensorboard_images_every_s: float = 600.0
    # Debug: append "partition offset step" for every trained message (fault tests use it).
    trained_log: str = ""


@dataclass(frozen=True)
class CheckpointConfig:
    dir: str = "runs/checkpoints"
    every_steps: int = 200
    every_seconds: float = 60.0
    keep: int = 3
    export_dir: str = "runs/export"
    # always | improved: with improved, a model whose eval mean IoU is more than export_tolerance
    # below the last exported one is not exported (checkpoints are written either way).
    export_policy: str = "always"
    export_tolerance: float = 0.0
    export_keep: int = 5  # numbered version directories kept in export_dir
    # An export takes seconds (two traced signatures + model.keras): at most one per this many
    # seconds, plus the first and the last checkpoint of a run. 0 = after every checkpoint.
    export_every_s: float = 300.0
    # Another trainer holds this directory or the consumer group (ownership.py): wait | fail.
    when_owned: str = "wait"


@dataclass(frozen=True)
class TrainerConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    replay: ReplayConfig = field(default_factory=ReplayConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


@dataclass(frozen=True)
class Settings:
    """A whole config file: shared Kafka and topic settings plus one section per program."""

    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    topics: TopicsConfig = field(default_factory=TopicsConfig)
    producer: ProducerConfig = field(default_factory=ProducerConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    def validate(self) -> Settings:
        """Check cross-field rules that types alone cannot express; return self."""
        checks = [
            (self.topics.partitions >= 1, "topics.partitions", "must be >= 1"),
            (self.topics.replication_factor == -1 or self.topics.replication_factor >= 1, "topics.replication_factor",
             "must be >= 1, or -1 for the cluster's default.replication.factor"),
            (self.producer.rate >= 0, "producer.rate", "must be >= 0"),
            (self.producer.passes >= 0, "producer.passes", "must be >= 0 (0 = forever)"),
            (self.producer.source.kind in {"synthetic", "dir", "tfds"}, "producer.source.kind",
             "must be one of synthetic, dir, tfds"),
            (self.producer.partitioner in {"key_hash", "round_robin"}, "producer.partitioner",
             "must be key_hash or round_robin"),
            (self.producer.compression in {"none", "gzip", "snappy", "lz4", "zstd"},
             "producer.compression", "must be one of none, gzip, snappy, lz4, zstd"),
            (0 <= self.producer.source.eval_fraction < 1, "producer.source.eval_fraction", "must be in [0, 1)"),
            (8 <= self.producer.source.min_size <= self.producer.source.max_size, "producer.source.min_size",
             "must be >= 8 and <= producer.source.max_size"),
            (self.trainer.source.auto_offset_reset in {"earliest", "latest"},
             "trainer.source.auto_offset_reset", "must be earliest or latest"),
            (self.trainer.source.on_offset_reset in {"fail", "earliest", "latest"},
             "trainer.source.on_offset_reset", "must be fail, earliest or latest"),
            (self.trainer.source.metadata_refresh_s > 0, "trainer.source.metadata_refresh_s", "must be > 0"),
            (self.trainer.source.max_restarts >= 0, "trainer.source.max_restarts", "must be >= 0"),
            (self.trainer.source.stall_timeout_s > 0, "trainer.source.stall_timeout_s", "must be > 0"),
            (self.trainer.source.queue_capacity >= 1, "trainer.source.queue_capacity", "must be >= 1"),
            (self.trainer.source.poll_timeout_ms > 0, "trainer.source.poll_timeout_ms", "must be > 0"),
            (self.trainer.source.reader in {"", *tfenv.READERS}, "trainer.source.reader",
             f"must be {' or '.join(tfenv.READERS)} (or empty for this stack's default)"),
            (self.trainer.source.reader != tfenv.TENSORFLOW_IO or tfenv.tensorflow_io_installed(),
             "trainer.source.reader", "is tensorflow-io, but tensorflow-io is not installed (it has no build for "
             "this Python/TensorFlow); use confluent-kafka"),
            (self.trainer.pipeline.max_batch_wait_ms >= 0, "trainer.pipeline.max_batch_wait_ms", "must be >= 0"),
            (self.trainer.pipeline.decode_group >= 1, "trainer.pipeline.decode_group", "must be >= 1"),
            (self.trainer.pipeline.max_pixels >= 0, "trainer.pipeline.max_pixels", "must be >= 0 (0 = no limit)"),
            (self.trainer.pipeline.decode_threads >= 0, "trainer.pipeline.decode_threads",
             "must be >= 0 (0 = AUTOTUNE)"),
            (self.trainer.replay.size_mib >= 0, "trainer.replay.size_mib", "must be >= 0 (0 = no replay)"),
            (self.trainer.replay.policy in {"reservoir", "fifo"}, "trainer.replay.policy", "must be reservoir or fifo"),
            (0 <= self.trainer.replay.fraction < 1, "trainer.replay.fraction", "must be in [0, 1)"),
            (0 <= self.trainer.cluster.index < max(1, len(self.trainer.cluster.workers)), "trainer.cluster.index",
             f"must be in [0, {max(1, len(self.trainer.cluster.workers))}) (the number of trainer.cluster.workers)"),
            (all(_is_host_port(w) for w in self.trainer.cluster.workers), "trainer.cluster.workers",
             "must be a list of host:port"),
            (len(set(self.trainer.cluster.workers)) == len(self.trainer.cluster.workers), "trainer.cluster.workers",
             "must not list a worker twice"),
            (self.trainer.cluster.max_wait_ms >= 0, "trainer.cluster.max_wait_ms", "must be >= 0"),
            (self.trainer.cluster.peer_timeout_s > 0, "trainer.cluster.peer_timeout_s", "must be > 0"),
            (self.trainer.cluster.join_timeout_s > 0, "trainer.cluster.join_timeout_s", "must be > 0"),
            (self.trainer.cluster.learning_rate_scaling in {"sqrt", "linear", "none"},
             "trainer.cluster.learning_rate_scaling", "must be sqrt, linear or none"),
            (self.trainer.pipeline.image_size >= 2 ** self.trainer.model.depth
             and self.trainer.pipeline.image_size % 2 ** self.trainer.model.depth == 0,
             "trainer.pipeline.image_size", "must be a multiple of 2**trainer.model.depth"),
            (self.trainer.pipeline.batch_size >= 1, "trainer.pipeline.batch_size", "must be >= 1"),
            (self.trainer.pipeline.shuffle_buffer >= 0, "trainer.pipeline.shuffle_buffer", "must be >= 0"),
            (self.trainer.model.depth >= 1, "trainer.model.depth", "must be >= 1"),
            (self.trainer.model.base_filters >= 1, "trainer.model.base_filters", "must be >= 1"),
            (self.trainer.model.precision in {"auto", "float32", "mixed_bfloat16", "mixed_float16"},
             "trainer.model.precision", "must be one of auto, float32, mixed_bfloat16, mixed_float16"),
            (self.trainer.loop.tensorboard_images_every_s >= 0, "trainer.loop.tensorboard_images_every_s",
             "must be >= 0 (0 = at every evaluation)"),
            (self.trainer.checkpoint.keep >= 1, "trainer.checkpoint.keep", "must be >= 1"),
            (self.trainer.checkpoint.every_steps >= 0, "trainer.checkpoint.every_steps", "must be >= 0"),
            (self.trainer.checkpoint.export_policy in {"always", "improved"}, "trainer.checkpoint.export_policy",
             "must be always or improved"),
            (0 <= self.trainer.checkpoint.export_tolerance <= 1, "trainer.checkpoint.export_tolerance",
             "must be in [0, 1] (a mean IoU difference)"),
            (self.trainer.checkpoint.export_keep >= 1, "trainer.checkpoint.export_keep", "must be >= 1"),
            (self.trainer.checkpoint.export_every_s >= 0, "trainer.checkpoint.export_every_s", "must be >= 0"),
            (self.trainer.checkpoint.when_owned in {"wait", "fail"}, "trainer.checkpoint.when_owned",
             "must be wait or fail"),
            (self.trainer.checkpoint.every_steps > 0 or self.trainer.checkpoint.every_seconds > 0,
             "trainer.checkpoint.every_steps",
             "and trainer.checkpoint.every_seconds are both 0, which would never checkpoint (no offsets saved, "
             "nothing committed); set at least one"),
            (0 <= self.trainer.metrics.port < 65536, "trainer.metrics.port", "must be a TCP port or 0"),
            (0 <= self.producer.metrics.port < 65536, "producer.metrics.port", "must be a TCP port or 0"),
        ]
        checks += _phase_checks(self.producer.source)
        for ok, key, rule in checks:
            if not ok:
                msg = f"config key '{key}' {rule}"
                raise ConfigError(msg)
        return self


def _is_host_port(text: str) -> bool:
    host, sep, port = text.rpartition(":")
    return bool(host) and sep == ":" and port.isdigit() and 0 < int(port) < 65536


# Keys that moved: the error says where to, instead of only "unknown key".
_MOVED = {
    "trainer.source.worker_index": "trainer.cluster.index",
    "trainer.source.worker_count": "trainer.cluster.workers (one host:port per worker)",
}

def _phase_checks(source: ProducerSourceConfig) -> list[tuple[bool, str, str]]:
    """The rules for ``producer.source.phases``, one (ok, key, rule) per field of each phase."""
    key = "producer.source.phases"
    checks = [(not source.phases or source.kind == "synthetic", key, "is only for producer.source.kind synthetic")]
    names: set[str] = set()
    for i, phase in enumerate(source.phases):
        at = f"{key}[{i}]"
        checks += [
            (SYNTHETIC_PHASE_NAME.fullmatch(phase.name) is not None, f"{at}.name",
             f"must be 1-32 letters, digits, '_' or '-', starting with a letter or digit, got {phase.name!r}"),
            (phase.name not in names, f"{at}.name", f"repeats {phase.name!r}: phase names must be unique"),
            (phase.images >= 1, f"{at}.images", "must be >= 1"),
            (phase.shape in SYNTHETIC_SHAPES, f"{at}.shape", f"must be one of {', '.join(SYNTHETIC_SHAPES)}"),
            (phase.pet_colour in SYNTHETIC_PET_COLOURS, f"{at}.pet_colour",
             f"must be one of {', '.join(SYNTHETIC_PET_COLOURS)}"),
            (phase.background in SYNTHETIC_BACKGROUNDS, f"{at}.background",
             f"must be one of {', '.join(SYNTHETIC_BACKGROUNDS)}"),
        ]
        names.add(phase.name)
    return checks


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def _expand(text: str, path: str) -> str:
    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        value = os.environ.get(name)
        if value is None or (value == "" and default is not None):
            if default is None:
                msg = f"config key '{path}' uses ${{{name}}}, but environment variable {name} is not set"
                raise ConfigError(msg)
            return default
        return value

    return _ENV.sub(repl, text)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Convert one YAML value to ``tp`` or raise a ConfigError naming ``path``."""
    if isinstance(value, str):
        value = _expand(value, path)
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            msg = f"config key '{path}' must be a mapping, got {type(value).__name__}"
            raise ConfigError(msg)
        return build(tp, value, path)  # type: ignore[arg-type]
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _coerce(value, args[0], path)
    if origin is list:
        if not isinstance(value, list):
            msg = f"config key '{path}' must be a list, got {type(value).__name__}"
            raise ConfigError(msg)
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            msg = f"config key '{path}' must be a mapping, got {type(value).__name__}"
            raise ConfigError(msg)
        return {str(k): _expand(str(v), f"{path}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {"true", "false"}:
            return value.lower() == "true"
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    msg = f"config key '{path}' must be {_type_name(tp)}, got {value!r}"
    raise ConfigError(msg)


def build(cls: type[T], data: dict[str, Any], path: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys with their full path."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in names:
            moved = _MOVED.get(full)
            msg = (f"config key '{full}' has moved to {moved}" if moved else
                   f"unknown config key '{full}' (known here: {', '.join(sorted(names))})")
            raise ConfigError(msg)
        kwargs[key] = _coerce(value, hints[key], full)
    return cls(**kwargs)


def _set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            msg = f"config key '{dotted}': '{part}' is not a section"
            raise ConfigError(msg)
        node = child
    node[parts[-1]] = value


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """A YAML file's top-level mapping ({} for an empty file); ConfigError in one line otherwise."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        msg = f"cannot read config file {path}: {exc.strerror}"
        raise ConfigError(msg) from exc
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # PyYAML's own text spans several lines (with a caret drawing); errors here are one line.
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        msg = f"config file {path} is not valid YAML{where}: {problem}"
        raise ConfigError(msg) from exc
    if loaded is not None and not isinstance(loaded, dict):
        msg = f"config file {path} must hold a mapping at the top level"
        raise ConfigError(msg)
    return loaded or {}


def load(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Load settings from ``path`` (or defaults), then apply dotted-key ``overrides``.

    Overrides come from CLI flags and environment variables, e.g.
    ``{"kafka.bootstrap_servers": "broker:9092"}``; they are validated like file keys.
    """
    data = read_yaml_mapping(path) if path is not None else {}
    for key, value in (overrides or {}).items():
        if value is not None:
            _set_path(data, key, value)
    return build(Settings, data).validate()


def replace(settings: T, dotted: str, value: Any) -> T:
    """Return a copy of nested frozen dataclasses with one dotted field changed (tests, CLI)."""
    head, _, rest = dotted.partition(".")
    if not rest:
        return dataclasses.replace(settings, **{head: value})  # type: ignore[type-var]
    return dataclasses.replace(settings, **{head: replace(getattr(settings, head), rest, value)})  # type: ignore[type-var]
