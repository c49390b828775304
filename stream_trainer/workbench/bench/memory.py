"""``--scenario memory`` (issue 23): where a trainer process's resident memory goes, phase by phase.

A real ``stream-trainer run`` process trains against the broker from a pre-filled backlog
(``bench.memory.backlog_mib_per_partition`` in every partition, so each partition's librdkafka
read-ahead can fill) and an eval topic. Its schedule puts every phase in order: the baseline
evaluation before the first step, then at step ``bench.memory.steps`` an evaluation, a checkpoint
and an export, then SIGTERM. The bench samples ``/proc/PID/status`` (VmRSS, VmHWM, Threads) and
the trainer's own /metrics every ``sample_every_s``; each phase starts and ends at an event the
trainer makes observable, never at a guessed time:

================  ==============================================================================
event             observed as
================  ==============================================================================
tensorflow        /metrics answers (served after TensorFlow is imported and the strategy exists)
readers           ``stream_trainer_kafka_consumers`` >= 1 (the model, optimizer and replay store
                  are built before the readers start)
baseline_eval     the snapshot file ``eval-step-00000000.png`` exists
first_step        ``stream_trainer_steps_total`` >= 1
inbox_full        ``stream_trainer_inbox_messages`` >= ``trainer.source.queue_capacity``
step_n            ``stream_trainer_steps_total`` >= ``steps``
eval_n            the snapshot file of step ``steps`` exists
checkpoint        ``stream_trainer_checkpoints_total`` >= 1
export            ``stream_trainer_exports_total`` >= 1
================  ==============================================================================

Each run is repeated per partition count (``trainer.source.partitions`` = the first P of one
topic) and per reader (``trainer.source.reader``, always set), so the cost of one more partition
is the slope between partition counts. The first ``backlog_full_partitions`` partitions hold
``backlog_mib_per_partition`` each, the rest ``backlog_mib_beyond`` (64 x 48 MiB would be 3 GiB).
``bench.memory.env`` adds environment to the trainer (``MALLOC_ARENA_MAX``, ``LD_PRELOAD``): the
allocator experiments of docs/benchmarks.md are this scenario run with ``--set``.
"""

from __future__ import annotations

import logging
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from stream_trainer.config import Settings
from stream_trainer.workbench.bench import config as bench_config
from stream_trainer.workbench.bench import machine
from stream_trainer.workbench.bench.config import BenchConfig, MemoryConfig
from stream_trainer.workbench.bench.scaleout import _PACKAGE_ROOT, _die_with_parent
from stream_trainer.workbench.bench.timing import BenchError
from stream_trainer.workbench.broker import free_port

log = logging.getLogger(__name__)

MIB = 2**20
STOP_GRACE_S = 60.0
EVENTS = ("tensorflow", "readers", "baseline_eval", "first_step", "inbox_full", "step_n", "eval_n", "checkpoint",
          "export")
_METRICS = {"steps": "stream_trainer_steps_total", "consumers": "stream_trainer_kafka_consumers",
            "inbox": "stream_trainer_inbox_messages", "checkpoints": "stream_trainer_checkpoints_total",
            "exports": "stream_trainer_exports_total", "replay_bytes": "stream_trainer_replay_bytes",
            "step_s": "stream_trainer_step_duration_seconds_sum"}


@dataclass(frozen=True)
class Sample:
    t_s: float
    rss_mib: float
    anon_mib: float  # RssAnon: the process's own memory (heap, stacks, tensors, queues)
    file_mib: float  # RssFile: mapped files, mostly TensorFlow's shared libraries (shareable, reclaimable)
    hwm_mib: float
    threads: int
    steps: float  # -1 while /metrics does not answer
    consumers: float
    inbox: float
    checkpoints: float
    exports: float
    replay_bytes: float
    step_s: float  # seconds spent in training steps so far: a smoke check that an allocator does not slow steps


def run(settings: Settings, bench: BenchConfig, command: str) -> dict[str, Any]:
    """Produce the backlog and the eval set once; run and sample one trainer per reader and partition count."""
    from stream_trainer.kafka import Cluster
    from stream_trainer.workbench.bench.workload import encode_all, make_records, produce_all

    session = machine.Session()
    mc = bench.memory
    cluster = Cluster(settings.kafka, group_id="stream-trainer-bench")
    workdir = Path(tempfile.mkdtemp(prefix="stream-trainer-bench-memory-"))
    most = max(mc.partition_counts)
    try:
        cluster.wait_until_reachable()
        records = make_records(mc.distinct, mc.message_image_px, bench.seed)
        values = encode_all(records)
        mean = sum(map(len, values)) / len(values)
        counts = backlog_counts(mc, mean, most)
        spread = round_robin(counts)
        train = produce_all(cluster, records, [values[i % len(values)] for i in range(len(spread))], most,
                            prefix="bench-memory", spread=spread)
        evals = produce_all(cluster, records, values[:mc.eval_images], 1, prefix="bench-memory-eval")
        log.info("produced %d messages (%.0f MiB) into %s (%d partitions) and %d into %s", len(spread),
                 len(spread) * mean / MIB, train.topic, most, mc.eval_images, evals.topic)
        runs: dict[str, dict[str, Any]] = {}
        for reader in mc.readers:
            runs[reader] = {}
            for n in mc.partition_counts:
                runs[reader][str(n)] = measure(settings, mc, train.topic, evals.topic, reader, n,
                                               workdir / f"{reader}-{n}")
                r = runs[reader][str(n)]
                log.info("%s, %d partition(s): peak RSS %.0f MiB, %d threads in training", reader, n,
                         r["peak_rss_mib"], r["phases"]["training"]["threads"])
        cluster.admin.delete_topics([train.topic, evals.topic])
    finally:
        cluster.close()
        if not os.environ.get("STREAM_TRAINER_BENCH_KEEP"):
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    p = settings.trainer.pipeline
    return {
        **session.header("memory", command),
        "workload": {"backlog_messages_per_partition": counts[0], "message_bytes_mean": round(mean),
                     "backlog_mib_per_partition": round(counts[0] * mean / MIB, 1), "topic_partitions": most,
                     # Partitions from backlog_full_partitions on (only runs of more partitions read them).
                     "backlog_messages_beyond": counts[-1] if most > mc.backlog_full_partitions else 0,
                     "backlog_mib_beyond": round(counts[-1] * mean / MIB, 1) if most > mc.backlog_full_partitions
                     else 0.0,
                     "eval_images": mc.eval_images, "image_size": p.image_size, "batch_size": p.batch_size,
                     "cores": len(os.sched_getaffinity(0))},
        "config": {"memory": bench_config.as_dict(mc), "trainer": bench_config.as_dict(settings.trainer),
                   "kafka_client": dict(settings.kafka.client)},
        "runs": runs,
        "per_partition": {reader: per_partition_cost(by_n) for reader, by_n in runs.items()},
    }


def backlog_counts(mc: MemoryConfig, message_bytes: float, partitions: int) -> list[int]:
    """Messages of the backlog in each partition: ``backlog_mib_per_partition`` in the first
    ``backlog_full_partitions``, ``backlog_mib_beyond`` in the rest."""
    full = max(1, math.ceil(mc.backlog_mib_per_partition * MIB / message_bytes))
    beyond = max(1, math.ceil(mc.backlog_mib_beyond * MIB / message_bytes))
    return [full if p < mc.backlog_full_partitions else beyond for p in range(partitions)]


def round_robin(counts: list[int]) -> list[int]:
    """The partition of each message, in turn over the partitions that still want one (as a
    producer spreading load would write them)."""
    out: list[int] = []
    for i in range(max(counts, default=0)):
        out.extend(p for p, n in enumerate(counts) if n > i)
    return out


def trainer_config(settings: Settings, mc: MemoryConfig, topic: str, eval_topic: str, reader: str, partitions: int,
                   metrics_port: int, workdir: Path) -> dict[str, Any]:
    """One run's settings: the bench's trainer section, the first ``partitions`` partitions, the phase schedule."""
    t = settings.trainer
    # The reader is always named: the stack's default (an empty reader) depends on what is installed.
    source: dict[str, Any] = {**asdict(t.source), "group_id": f"bench-memory-{uuid.uuid4().hex[:8]}",
                              "partitions": list(range(partitions)), "reader": reader}
    return {
        "kafka": {"bootstrap_servers": settings.kafka.bootstrap_servers, "client": dict(settings.kafka.client)},
        "topics": {"train": topic, "eval": eval_topic, "dead_letter": f"{topic}-dlq"},
        "trainer": {
            "source": source, "pipeline": asdict(t.pipeline), "replay": asdict(t.replay), "model": asdict(t.model),
            "loop": {"eval_every_steps": mc.steps, "eval_max_images": mc.eval_images, "eval_wait_s": 30.0,
                     "log_every_s": 5.0, "snapshot_dir": str(workdir / "snapshots")},
            "checkpoint": {"dir": str(workdir / "checkpoints"), "export_dir": str(workdir / "export"),
                           "every_steps": mc.steps, "every_seconds": 36000.0, "export_every_s": 0.0},
            "metrics": {"host": "127.0.0.1", "port": metrics_port},
        },
    }


def measure(settings: Settings, mc: MemoryConfig, topic: str, eval_topic: str, reader: str, partitions: int,
            workdir: Path) -> dict[str, Any]:
    """Start one trainer, sample it until it has exported (then SIGTERM), and read its phases."""
    workdir.mkdir(parents=True)
    port = free_port()
    path = workdir / "trainer.yaml"
    path.write_text(yaml.safe_dump(trainer_config(settings, mc, topic, eval_topic, reader, partitions, port, workdir)))
    env = {**os.environ, **mc.env, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join([str(_PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    env.pop("KAFKA_BOOTSTRAP", None)  # the config file names the broker
    log_path = workdir / "trainer.log"
    snapshots = workdir / "snapshots"
    with open(log_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "stream_trainer.cli", "run", "--config", str(path)], env=env,
                                stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    samples: list[Sample] = []
    events: dict[str, float] = {}
    t0 = time.monotonic()
    try:
        while "export" not in events:
            if proc.poll() is not None:
                tail = "\n".join(log_path.read_text(errors="replace").strip().splitlines()[-8:])
                msg = f"the trainer exited with {proc.returncode} during the memory bench; its last lines:\n{tail}"
                raise BenchError(msg)
            if time.monotonic() - t0 > mc.start_timeout_s:
                msg = (f"the trainer did not export within {mc.start_timeout_s:.0f} s "
                       f"(bench.memory.start_timeout_s); reached {sorted(events, key=events.get)}")  # type: ignore[arg-type]
                raise BenchError(msg)
            s = _sample(proc.pid, port, time.monotonic() - t0)
            samples.append(s)
            _mark(events, s, snapshots, mc, settings.trainer.source.queue_capacity)
            time.sleep(mc.sample_every_s)
        time.sleep(mc.settle_s)
        samples.append(_sample(proc.pid, port, time.monotonic() - t0))
    finally:
        stop_s = _stop(proc)
    last = samples[-1]
    return {"partitions": partitions, "reader": reader, "env": dict(mc.env), "events": events,
            # Steps after the first (which traces): mean seconds per step, on a shared machine only a smoke check.
            "step_s_mean": round(_step_mean(samples), 3),
            "phases": phases(samples, events), "peak_rss_mib": last.hwm_mib, "stop_s": round(stop_s, 1),
            "replay_bytes": last.replay_bytes, "samples": [asdict(s) for s in samples]}


def _step_mean(samples: list[Sample]) -> float:
    """Mean step seconds over the steps after the first, from the step-duration histogram's sum."""
    first = next((s for s in samples if s.steps >= 1), None)
    last = samples[-1]
    return (last.step_s - first.step_s) / (last.steps - first.steps) if first and last.steps > first.steps else 0.0


def _mark(events: dict[str, float], s: Sample, snapshots: Path, mc: MemoryConfig, inbox_capacity: int) -> None:
    """Record the first sample at which each event is seen."""
    seen = {
        "tensorflow": s.steps >= 0,
        "readers": s.consumers >= 1,
        "baseline_eval": (snapshots / f"eval-step-{0:08d}.png").exists(),
        "first_step": s.steps >= 1,
        "inbox_full": s.inbox >= inbox_capacity,
        "step_n": s.steps >= mc.steps,
        "eval_n": (snapshots / f"eval-step-{mc.steps:08d}.png").exists(),
        "checkpoint": s.checkpoints >= 1,
        "export": s.exports >= 1,
    }
    for name, now in seen.items():
        if now and name not in events:
            events[name] = s.t_s


def phases(samples: list[Sample], events: dict[str, float]) -> dict[str, dict[str, float]]:
    """RSS and threads per phase, each between two observed events (see the module docstring)."""
    def window(start: str | None, end: str | None) -> list[Sample]:
        lo = events.get(start, 0.0) if start else 0.0
        hi = events.get(end, math.inf) if end else math.inf
        return [s for s in samples if lo <= s.t_s <= hi and s.rss_mib > 0]

    def of(s: Sample | None, threads: int) -> dict[str, float]:
        if s is None:
            return {"rss_mib": 0.0, "anon_mib": 0.0, "file_mib": 0.0, "threads": 0}
        return {"rss_mib": s.rss_mib, "anon_mib": s.anon_mib, "file_mib": s.file_mib, "threads": threads}

    def peak(rows: list[Sample]) -> dict[str, float]:
        return of(max(rows, key=lambda s: s.rss_mib) if rows else None, max((s.threads for s in rows), default=0))

    def at(name: str) -> dict[str, float]:
        rows = [s for s in samples if s.t_s >= events.get(name, math.inf)]
        return of(rows[0], rows[0].threads) if rows else of(None, 0)

    before_readers = [s for s in window("tensorflow", "readers") if s.t_s < events.get("readers", math.inf)]
    steady = window("inbox_full" if "inbox_full" in events else "first_step", "step_n")
    steady = steady[len(steady) // 2:] or steady  # the later half: the first steps still trace and warm up
    return {
        "tensorflow_imported": at("tensorflow"),
        "model_optimizer_replay": peak(before_readers),
        "readers_and_baseline_eval": peak(window("readers", "baseline_eval")),
        "first_step": at("first_step"),
        "training": of(sorted(steady, key=lambda s: s.rss_mib)[len(steady) // 2] if steady else None,
                       max((s.threads for s in steady), default=0)),
        "evaluation": peak(window("step_n", "eval_n")),
        "checkpoint": peak(window("eval_n", "checkpoint")),
        "export": peak(window("checkpoint", "export")),
    }


def per_partition_cost(by_n: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Least-squares slope over partition counts of training RSS, peak RSS and threads."""
    ns = sorted(int(n) for n in by_n)
    if len(ns) < 2:
        return {}

    def slope(ys: list[float]) -> float:
        mx, my = sum(ns) / len(ns), sum(ys) / len(ys)
        return sum((x - mx) * (y - my) for x, y in zip(ns, ys, strict=True)) / sum((x - mx) ** 2 for x in ns)

    runs = [by_n[str(n)] for n in ns]
    return {"training_rss_mib": round(slope([r["phases"]["training"]["rss_mib"] for r in runs]), 2),
            "peak_rss_mib": round(slope([r["peak_rss_mib"] for r in runs]), 2),
            "threads": round(slope([r["phases"]["training"]["threads"] for r in runs]), 2)}


def _status(pid: int) -> dict[str, int]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    return {k: int(v) for k, v in re.findall(r"^(VmRSS|VmHWM|RssAnon|RssFile|Threads):\s+(\d+)", text, re.M)}


def _scrape(port: int) -> dict[str, float]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return {}
    out = dict.fromkeys(_METRICS, 0.0)
    for key, name in _METRICS.items():
        # Summed over label sets (exports_total has one per outcome); every sample carries ``worker``.
        for m in re.finditer(rf"^{name}(?:\{{[^}}]*\}})? (\S+)$", text, re.M):
            out[key] += float(m.group(1))
    return out


def _sample(pid: int, port: int, t_s: float) -> Sample:
    st, m = _status(pid), _scrape(port)
    return Sample(round(t_s, 2), round(st.get("VmRSS", 0) / 1024, 1), round(st.get("RssAnon", 0) / 1024, 1),
                  round(st.get("RssFile", 0) / 1024, 1), round(st.get("VmHWM", 0) / 1024, 1),
                  st.get("Threads", 0), m.get("steps", -1.0), m.get("consumers", 0.0), m.get("inbox", 0.0),
                  m.get("checkpoints", 0.0), m.get("exports", 0.0), m.get("replay_bytes", 0.0), m.get("step_s", 0.0))


def _stop(proc: subprocess.Popen[bytes]) -> float:
    """SIGTERM (the daemon's clean stop: final checkpoint), SIGKILL after the grace; seconds taken."""
    t0 = time.monotonic()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            log.warning("trainer pid %d did not stop within %.0f s of SIGTERM; killing it", proc.pid, STOP_GRACE_S)
            proc.kill()
            proc.wait()
    return time.monotonic() - t0
