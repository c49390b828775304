"""Fault-injection harness: the real broker, ``pet-producer`` and ``stream-trainer run`` as processes.

Every scenario starts the programs the way an operator does (``python -m ... --config FILE``) with a
YAML written into the test's ``tmp_path``, injects a fault from outside (SIGKILL, a broker stop, a
broken checkpoint directory, poison messages) and then asserts on Kafka and checkpoint state: which
offsets were trained (``trainer.loop.trained_log``), what the checkpoint holds, what the group
committed, what landed in the dead-letter topic. Logs are only attached to failure messages.

Speed: a tiny U-Net (4 filters, depth 2) on 32 px images, batches of 4, a shuffle window of 8 and
small synthetic images, so that one trainer start costs seconds, not minutes, on 2 cores.

Scenarios marked ``faults`` and ``slow`` run only with ``--run-faults`` (``make test-faults``); the
fast ones run in every ``make test``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from stream_trainer.config import KafkaConfig
from stream_trainer.kafka import Cluster
from stream_trainer.workbench.broker import LocalBroker, free_port

ROOT = Path(__file__).resolve().parents[2]

# Shapes every fault scenario shares; scenarios state the ones their bounds depend on.
BATCH = 4
SHUFFLE = 0  # fresh rows train oldest first: the duplicate bound is one checkpoint interval exactly
CHECKPOINT_EVERY = 5


# --- processes -------------------------------------------------------------------------------------

def own_broker(tmp_path_factory: pytest.TempPathFactory, name: str) -> Iterator[LocalBroker]:
    """A broker of the module's own, for scenarios that stop, pause or restart it (never the session's);
    a module fixture yields from it."""
    own = LocalBroker(tmp_path_factory.mktemp(name), heap="512m")
    own.start()
    try:
        yield own
    finally:
        own.stop()


def child_env() -> dict[str, str]:
    """The environment for programs under test: no variable may override the YAML we wrote."""
    env = {k: v for k, v in os.environ.items()
           if k != "KAFKA_BOOTSTRAP" and not k.startswith(("STREAM_TRAINER_", "PET_PRODUCER_"))}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env["TF_CPP_MIN_LOG_LEVEL"] = "1"  # tfio logs every partition EOF at INFO
    if "STREAM_TRAINER_CACHE" in os.environ:  # where the broker jars are, not a setting
        env["STREAM_TRAINER_CACHE"] = os.environ["STREAM_TRAINER_CACHE"]
    return env


class Program:
    """One program under test. Its output goes through a pipe into ``log``.

    A pipe and not a file: a file limit (RLIMIT_FSIZE) set on the program to simulate a full disk
    must hit its checkpoint writes, not its stderr.
    """

    def __init__(self, name: str, module_args: list[str], log: Path,
                 preexec_fn: Callable[[], None] | None = None) -> None:
        self.name = name
        self.log = log
        self.output: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", *module_args], cwd=ROOT, env=child_env(), stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
            preexec_fn=preexec_fn)
        self._pump = threading.Thread(target=self._copy_output, name=f"pump-{name}", daemon=True)
        self._pump.start()

    def _copy_output(self) -> None:
        assert self.proc.stdout is not None
        with self.log.open("a") as out:
            for line in self.proc.stdout:
                out.write(line)
                out.flush()
                self.output.append(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed or checkpointed."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._pump.join(10)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait for a clean exit (final checkpoint + commit); SIGKILL after ``timeout_s``."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)
        self._pump.join(10)
        return self.proc.returncode

    def tail(self, lines: int = 40) -> str:
        noise = ("oneDNN", "cuda", "TensorRT", "cpu_feature_guard", "AVX", "rebuild TensorFlow",
                 "Sharding callback", "Unable to register")
        kept = [line for line in self.output if not any(n in line for n in noise)]
        return "".join(kept[-lines:])


@dataclass
class Rig:
    """One scenario: its files, its topic and group, and every program it started."""

    tmp: Path
    bootstrap: str
    topic: str
    group: str
    partitions: int
    reader: str = ""  # trainer.source.reader ("" = the stack's default)
    programs: list[Program] = field(default_factory=list)

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.topic}-dlq"

    @property
    def checkpoint_dir(self) -> Path:
        return self.tmp / "checkpoints"

    def settings(self, **dotted: Any) -> dict[str, Any]:
        """The scenario's YAML as a dict: tiny shapes, no evaluation, then ``dotted`` overrides.

        Keys use ``__`` for dots (``trainer__loop__trained_log=...``).
        """
        data: dict[str, Any] = {
            "kafka": {"bootstrap_servers": self.bootstrap, "connect_timeout_s": 10},
            "topics": {"train": self.topic, "eval": f"{self.topic}-eval", "dead_letter": self.dead_letter_topic,
                       "partitions": self.partitions},
            "producer": {
                "source": {"kind": "synthetic", "count": 40, "min_size": 48, "max_size": 64, "eval_fraction": 0.0},
                "rate": 10, "passes": 0, "send_eval": False, "metrics": {"port": 0}},
            "trainer": {
                "source": {"group_id": self.group, "poll_timeout_ms": 500, "reader": self.reader},
                "pipeline": {"image_size": 32, "batch_size": BATCH, "shuffle_buffer": SHUFFLE},
                "model": {"base_filters": 4, "depth": 2, "precision": "mixed_bfloat16"},  # named, not the host's
                "loop": {"eval_every_steps": 0, "eval_wait_s": 0, "log_every_s": 2,
                         "snapshot_dir": str(self.tmp / "snapshots"),
                         "tensorboard_dir": str(self.tmp / "tensorboard")},
                "checkpoint": {"dir": str(self.checkpoint_dir), "export_dir": str(self.tmp / "export"),
                               "every_steps": CHECKPOINT_EVERY, "every_seconds": 0, "keep": 3},
                "replay": {"size_mib": 4},
                "metrics": {"host": "127.0.0.1", "port": 0}},
        }
        for key, value in dotted.items():
            node = data
            *parents, leaf = key.split("__")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
        return data

    def write_config(self, name: str, data: dict[str, Any]) -> Path:
        path = self.tmp / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def start(self, name: str, module_args: list[str], preexec_fn: Callable[[], None] | None = None) -> Program:
        program = Program(name, module_args, self.tmp / f"{name}.log", preexec_fn)
        self.programs.append(program)
        return program

    def trainer(self, config: Path, name: str = "trainer", *args: str,
                preexec_fn: Callable[[], None] | None = None) -> Program:
        return self.start(name, ["stream_trainer.cli", "run", "--config", str(config), *args], preexec_fn)

    def producer(self, config: Path, name: str = "producer", *args: str) -> Program:
        return self.start(name, ["producer.cli", "--config", str(config), *args])

    def logs(self) -> str:
        """Tails of every program's output, for failure messages."""
        return "".join(f"\n--- {p.name} (pid {p.pid}, exit {p.proc.poll()}) ---\n{p.tail()}" for p in self.programs)

    def stop_all(self) -> None:
        for program in reversed(self.programs):
            program.stop(timeout_s=20)

    def require_alive(self, *programs: Program) -> None:
        for program in programs:
            if not program.alive:
                pytest.fail(f"{program.name} exited with {program.proc.returncode}{self.logs()}")

    def wait_until(self, condition: Callable[[], Any], timeout_s: float, what: str,
                   alive: tuple[Program, ...] = (), interval_s: float = 0.5) -> Any:
        """Poll ``condition`` until truthy; fail naming ``what`` (with logs) on timeout or a death."""
        deadline = time.monotonic() + timeout_s
        while True:
            result = condition()
            if result:
                return result
            self.require_alive(*alive)
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}{self.logs()}")
            time.sleep(interval_s)


def make_rig(tmp_path: Path, bootstrap: str, partitions: int, prefix: str, reader: str = "") -> Rig:
    """A rig with a fresh topic (and dead-letter topic) of ``partitions`` partitions."""
    topic = f"{prefix}-{uuid.uuid4().hex[:8]}"
    cluster = Cluster(KafkaConfig(bootstrap_servers=bootstrap, connect_timeout_s=20))
    try:
        cluster.wait_until_reachable()
        cluster.ensure_topics({topic: partitions, f"{topic}-dlq": 1})
    finally:
        cluster.close()
    return Rig(tmp=tmp_path, bootstrap=bootstrap, topic=topic, group=f"{prefix}-{uuid.uuid4().hex[:8]}",
               partitions=partitions, reader=reader)


# --- what the trainer did --------------------------------------------------------------------------

TrainedLine = tuple[int, int, int]  # partition, offset, step


def read_trained(path: Path) -> list[TrainedLine]:
    """``trainer.loop.trained_log`` lines; a half-written last line (SIGKILL) is ignored."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and all(p.isdigit() for p in parts):
            out.append((int(parts[0]), int(parts[1]), int(parts[2])))
    return out


def trained_counts(*paths: Path) -> Counter[tuple[int, int]]:
    """How many times each (partition, offset) went through a training step."""
    return Counter((p, o) for path in paths for p, o, _ in read_trained(path))


def missing_offsets(trained: Counter[tuple[int, int]] | set[tuple[int, int]],
                    ends: dict[int, int], starts: dict[int, int] | None = None) -> dict[int, list[int]]:
    """Per partition, the offsets in [start, end) never trained."""
    out: dict[int, list[int]] = defaultdict(list)
    for p, end in ends.items():
        for o in range((starts or {}).get(p, 0), end):
            if (p, o) not in trained:
                out[p].append(o)
    return dict(out)


@dataclass(frozen=True)
class SavedCheckpoint:
    path: str
    step: int
    positions: dict[int, int]


def latest_checkpoint(directory: Path, attempts: int = 5) -> SavedCheckpoint | None:
    """The newest checkpoint TensorFlow would restore from ``directory`` (read-only), or None."""
    import tensorflow as tf

    from stream_trainer.state.checkpoint import read_state

    for attempt in range(attempts):
        try:
            state = read_state(directory)
        except (tf.errors.OpError, ValueError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.2)  # a running trainer swept it away between the two reads
            continue
        return None if state is None else SavedCheckpoint(state.path, state.step, state.offsets)
    return None


def lock_is_free(checkpoint_dir: Path) -> bool:
    """Whether a new trainer could take the checkpoint directory's lock now (``ownership.DirectoryLock``)."""
    import fcntl

    with (checkpoint_dir / ".owner").open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


# --- Kafka state ---------------------------------------------------------------------------------

def log_ends(bootstrap: str, topic: str) -> dict[int, int]:
    """Per partition, the high watermark: the offset the next message will get."""
    cluster = Cluster(KafkaConfig(bootstrap_servers=bootstrap))
    try:
        marks = cluster.watermarks(topic, cluster.partitions(topic))
        return {p: m.high for p, m in marks.items()}
    finally:
        cluster.close()


def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> dict[int, int]:
    cluster = Cluster(KafkaConfig(bootstrap_servers=bootstrap), group_id=group)
    try:
        return cluster.committed(topic, list(range(partitions)))
    finally:
        cluster.close()


@dataclass(frozen=True)
class DeadLetter:
    partition: int  # of the training topic (header dlq.partition)
    offset: int  # header dlq.offset
    reason: str
    detail: str
    key: bytes | None
    value: bytes | None


def read_partition(bootstrap: str, topic: str, timeout_s: float = 10.0, partition: int = 0) -> list[Any]:
    """Every message of one partition of ``topic`` (confluent-kafka ``Message`` objects), in order."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": False, "enable.partition.eof": True,
                         "auto.offset.reset": "earliest"})  # a log start moved by retention
    out: list[Any] = []
    try:
        consumer.assign([TopicPartition(topic, partition, 0)])
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while high > low and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    break
                continue
            out.append(msg)
            if msg.offset() + 1 >= high:
                break
    finally:
        consumer.close()
    return out


def read_dead_letters(bootstrap: str, topic: str, timeout_s: float = 10.0) -> list[DeadLetter]:
    """Everything in the dead-letter topic, with its headers decoded."""
    out = []
    for msg in read_partition(bootstrap, topic, timeout_s):
        headers = {k: v.decode() for k, v in msg.headers() or []}
        out.append(DeadLetter(int(headers["dlq.partition"]), int(headers["dlq.offset"]), headers["dlq.reason"],
                              headers.get("dlq.detail", ""), msg.key(), msg.value()))
    return out


# --- metrics -------------------------------------------------------------------------------------

def scrape(port: int) -> str:
    """The trainer's /metrics page, or "" while it is not serving."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as resp:
            return str(resp.read().decode())
    except OSError:
        return ""


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for m in re.finditer(rf"^{re.escape(name)}(?:{{([^}}]*)}})? (\S+)$", text, re.M):
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return total


__all__ = ["BATCH", "CHECKPOINT_EVERY", "SHUFFLE", "DeadLetter", "Program", "Rig", "SavedCheckpoint",
           "committed_offsets", "free_port", "latest_checkpoint", "lock_is_free", "log_ends", "make_rig", "metric",
           "missing_offsets", "read_dead_letters", "read_trained", "scrape", "trained_counts"]
