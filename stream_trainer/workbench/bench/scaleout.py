"""``--workers 1,2`` (issue 12): images/s trained by 1, 2, ... ``stream-trainer run`` processes on one topic.

For each worker count N the bench starts N unmodified ``stream-trainer run`` processes (one
per worker: ``MultiWorkerMirroredStrategy`` needs each worker in its own process) with
``trainer.cluster.workers`` listing all of them, all reading the same pre-filled topic from its
start. Each process gets its share of the cores: ``TF_NUM_INTRAOP_THREADS`` and
``TF_NUM_INTEROP_THREADS`` (TensorFlow reads both when its thread pools are created; the
bench checked it by counting the threads they start) and ``trainer.pipeline.decode_threads``
(tf.data's decode map). Nothing is measured from outside: the rates come from each process's
own /metrics (``stream_trainer_images_trained_total``, ``..._images_replayed_total``,
``..._steps_total``, the ``..._collective_seconds`` and ``..._step_duration_seconds``
histograms, all labelled ``worker``), scraped at the start and the end of a steady window
after every worker has stepped ``warmup_steps`` times and ``warmup_s`` more have passed. Each
worker's peak RSS (VmHWM) is read from /proc at the end of the window: the daemon's memory.

With ``--cores-per-worker K`` (issue 23) every worker has its own K cores, the one-worker
baseline too (``scaleout_cores.py``), so the efficiency is per core: images/s of N workers /
(N x one worker on K cores). Each worker count then runs twice, with the replay store as
configured and without it (``trainer.replay.size_mib: 0``), and the gradient all-reduce of one
step is timed on its own (``scaleout_allreduce.py``) beside the vote the workers report.

Every process started is stopped, also when the bench fails: SIGTERM (the daemon's own clean
stop), SIGKILL after ``stop_grace_s``, and Linux's parent-death signal should the bench itself
be killed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml

import stream_trainer
from stream_trainer import config as settings_config
from stream_trainer.config import Settings
from stream_trainer.workbench.bench import config as bench_config
from stream_trainer.workbench.bench import machine, scaleout_allreduce, scaleout_cores
from stream_trainer.workbench.bench.config import BenchConfig, ScaleoutConfig
from stream_trainer.workbench.bench.scaleout_cores import Placement
from stream_trainer.workbench.bench.scrape import WorkerSample, job_rates, parse_metrics
from stream_trainer.workbench.bench.timing import BenchError
from stream_trainer.workbench.broker import free_port

log = logging.getLogger(__name__)

_PACKAGE_ROOT = Path(stream_trainer.__file__).resolve().parents[1]
_die_with_parent = scaleout_cores.die_with_parent  # the memory scenario starts its trainer with it


def run(settings: Settings, bench: BenchConfig, counts: list[int], command: str,
        placement: Placement | None = None) -> dict[str, Any]:
    """Produce the shared topic once, then run and measure one job per worker count (and replay mode)."""
    from stream_trainer.kafka import Cluster
    from stream_trainer.workbench.bench.workload import encode_all, make_records, produce_all

    session = machine.Session()
    sc = bench.scaleout
    cores = len(os.sched_getaffinity(0))
    for n in counts:
        if n > sc.partitions:
            msg = f"{n} workers need at least {n} partitions; raise bench.scaleout.partitions"
            raise BenchError(msg)
    # Placed before the bench's own librdkafka threads start: they inherit this process's cores.
    broker = _place_others(placement)
    cluster = Cluster(settings.kafka, group_id="stream-trainer-bench")
    workdir = Path(tempfile.mkdtemp(prefix="stream-trainer-bench-scaleout-"))
    off = settings_config.replace(settings, "trainer.replay.size_mib", 0.0)
    modes = {"configured": settings, "replay_off": off} if placement and settings.trainer.replay.size_mib else {
        "configured": settings}
    runs: dict[str, dict[str, Any]] = {mode: {} for mode in modes}
    allreduce: dict[str, Any] = {}
    try:
        cluster.wait_until_reachable()
        records = make_records(sc.distinct, sc.message_image_px, bench.seed)
        values = encode_all(records)
        w = produce_all(cluster, records, [values[i % len(values)] for i in range(sc.messages)], sc.partitions,
                        prefix="bench-scale")
        log.info("produced %d messages into %s (%d partitions)", sc.messages, w.topic, sc.partitions)
        for mode, mode_settings in modes.items():
            for n in counts:
                threads = placement.cores_per_worker if placement else max(1, cores // n)
                job = measure_job(mode_settings, w.topic, n, threads, sc, workdir / f"job-{mode}-{n}", placement)
                runs[mode][str(n)] = job
                log.info("%d worker(s), replay %s: %.1f fresh images/s, %.1f rows/s, vote %.2f ms/step", n,
                         "off" if mode == "replay_off" else "as configured", job["fresh_images_per_s"],
                         job["rows_per_s"], 1000 * job["collective_s_per_step"])
        if placement is not None:
            m, p = settings.trainer.model, settings.trainer.pipeline
            for n in (n for n in counts if n > 1):
                allreduce[str(n)] = scaleout_allreduce.measure(
                    n, placement, p.image_size, m.base_filters, m.depth, _env(placement.cores_per_worker),
                    workdir / f"allreduce-{n}", sc.start_timeout_s)
                log.info("%d workers: gradient all-reduce of %.2f MB, median %.2f ms", n,
                         allreduce[str(n)]["payload_bytes"] / 1e6, 1000 * allreduce[str(n)]["median_s"])
        cluster.admin.delete_topics([w.topic, f"{w.topic}-dlq"])
    finally:
        cluster.close()
        if placement is not None:
            scaleout_cores.pin(os.getpid(), placement.usable)
        if os.environ.get("STREAM_TRAINER_BENCH_KEEP"):
            log.info("kept the workers' files in %s", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    p = settings.trainer.pipeline
    jobs = runs["configured"]
    results = {
        **session.header("scaleout", command),
        "workload": {"messages": sc.messages, "distinct_images": sc.distinct, "partitions": sc.partitions,
                     "message_image_px": sc.message_image_px, "image_size": p.image_size,
                     "batch_size_per_worker": p.batch_size, "cores": cores,
                     "replay_size_mib": settings.trainer.replay.size_mib,
                     "cores_per_worker": placement.cores_per_worker if placement else None},
        "config": {"scaleout": bench_config.as_dict(sc), "trainer": bench_config.as_dict(settings.trainer)},
        "jobs": jobs,
        "efficiency": efficiency(jobs),
    }
    if placement is not None:
        results["placement"] = placement.describe(broker)
        results["rows_efficiency"] = efficiency(jobs, "rows_per_s")
        results["gradient_allreduce"] = allreduce
        if "replay_off" in runs:
            results["replay_off"] = {"jobs": runs["replay_off"], "efficiency": efficiency(runs["replay_off"]),
                                     "rows_efficiency": efficiency(runs["replay_off"], "rows_per_s")}
    return results


def _place_others(placement: Placement | None) -> str:
    """Pin the bench process and the local broker it started to the cores no worker uses, where any
    are left; "local" or "external" (the broker). Before any worker starts, the bench's only children
    are the local broker's processes."""
    kids = scaleout_cores.children(os.getpid())
    broker = "local" if kids else "external"
    if placement is not None and placement.others:
        for pid in [*kids, os.getpid()]:
            scaleout_cores.pin(pid, placement.others)
    return broker


def _env(threads: int) -> dict[str, str]:
    """A worker's environment: TensorFlow's thread pools sized to its cores, this checkout's code."""
    env = {**os.environ, "TF_NUM_INTRAOP_THREADS": str(threads), "TF_NUM_INTEROP_THREADS": str(threads),
           "PYTHONPATH": os.pathsep.join([str(_PACKAGE_ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "PYTHONUNBUFFERED": "1"}
    env.pop("KAFKA_BOOTSTRAP", None)  # the config file names the broker
    return env


def efficiency(jobs: dict[str, dict[str, Any]], rate: str = "fresh_images_per_s") -> dict[str, float]:
    """Per worker count N > 1: ``rate`` (fresh images/s) of N workers / (N x that of 1 worker).

    With ``--cores-per-worker`` the one worker had the same K cores as each of the N: the
    per-core efficiency."""
    if "1" not in jobs or not jobs["1"][rate]:
        return {}
    one = jobs["1"][rate]
    return {n: j[rate] / (int(n) * one) for n, j in jobs.items() if n != "1"}


def worker_config(settings: Settings, topic: str, addresses: list[str], index: int, threads: int, metrics_port: int,
                  group: str, workdir: Path) -> dict[str, Any]:
    """The settings file of one worker: the bench's trainer section, this job's cluster, no eval."""
    t = settings.trainer
    return {
        "kafka": {"bootstrap_servers": settings.kafka.bootstrap_servers, "client": dict(settings.kafka.client)},
        "topics": {"train": topic, "eval": f"{topic}-no-eval", "dead_letter": f"{topic}-dlq"},
        "trainer": {
            "source": {**dataclasses.asdict(t.source), "group_id": group},
            "pipeline": {**dataclasses.asdict(t.pipeline), "decode_threads": threads},
            "replay": dataclasses.asdict(t.replay),
            "model": dataclasses.asdict(t.model),
            "cluster": {"workers": addresses if len(addresses) > 1 else [], "index": index,
                        "scratch_dir": str(workdir / "scratch")},
            "loop": {"eval_every_steps": 0, "eval_wait_s": 0.0, "log_every_s": 5.0,
                     "snapshot_dir": str(workdir / "snapshots"),
                     "tensorboard_dir": str(workdir / "tensorboard")},
            "checkpoint": {"dir": str(workdir / "checkpoints"), "export_dir": str(workdir / "export"),
                           "every_steps": 0, "every_seconds": 36000.0},
            "metrics": {"host": "127.0.0.1", "port": metrics_port},
        },
    }


def measure_job(settings: Settings, topic: str, n: int, threads: int, sc: ScaleoutConfig, workdir: Path,
                placement: Placement | None = None) -> dict[str, Any]:
    """Start ``n`` workers (each on its cores if placed), measure their steady window from their
    /metrics, stop them all."""
    workdir.mkdir(parents=True)
    addresses = [f"127.0.0.1:{free_port()}" for _ in range(n)]
    metrics_ports = [free_port() for _ in range(n)]
    group = f"bench-scale-{n}-{uuid.uuid4().hex[:8]}"
    env = _env(threads)
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    try:
        for i in range(n):
            path = workdir / f"worker-{i}.yaml"
            path.write_text(yaml.safe_dump(worker_config(settings, topic, addresses, i, threads, metrics_ports[i],
                                                         group, workdir / f"worker-{i}")))
            log_path = workdir / f"worker-{i}.log"
            argv = [sys.executable, "-m", "stream_trainer.cli", "run", "--config", str(path)]
            proc = scaleout_cores.launch(argv, env, log_path, placement.worker_cores(i) if placement else None)
            procs.append((proc, log_path))
        urls = [f"http://127.0.0.1:{port}/metrics" for port in metrics_ports]
        t_start = time.monotonic()
        _wait_for_steps(procs, urls, sc.warmup_steps, sc.start_timeout_s)
        ready_s = time.monotonic() - t_start
        time.sleep(sc.warmup_s)
        before, t0 = _scrape_all(procs, urls), time.monotonic()
        time.sleep(sc.window_s)
        after, t1 = _scrape_all(procs, urls), time.monotonic()
        peak_rss = [machine.child_peak_rss_mib(proc.pid) for proc, _ in procs]
        # Read back, not assumed: every thread TensorFlow and librdkafka started by now.
        affinity = [scaleout_cores.affinity_of(proc.pid) for proc, _ in procs]
    finally:
        stop_s = scaleout_cores.stop_all([proc for proc, _ in procs])
    rates = job_rates(before, after, t1 - t0)
    if sum(s.images for s in after) >= sc.messages:
        msg = f"the {n}-worker job ran out of messages inside its window; raise bench.scaleout.messages"
        raise BenchError(msg)
    job = {"workers": n, "threads_per_worker": threads, "window_s": t1 - t0, "start_to_ready_s": ready_s,
           "stop_s": stop_s, "peak_rss_mib": peak_rss, "affinity": affinity, **rates}
    if placement is not None:
        job["cores"] = [scaleout_cores.cpu_list(placement.worker_cores(i)) for i in range(n)]
    return job


def _scrape(url: str) -> WorkerSample:
    with urllib.request.urlopen(url, timeout=10) as response:
        return parse_metrics(response.read().decode())


def _scrape_all(procs: list[tuple[subprocess.Popen[bytes], Path]], urls: list[str]) -> list[WorkerSample]:
    _check_alive(procs)
    return [_scrape(u) for u in urls]


def _check_alive(procs: list[tuple[subprocess.Popen[bytes], Path]]) -> None:
    for i, (proc, log_path) in enumerate(procs):
        if proc.poll() is not None:
            tail = "\n".join(log_path.read_text(errors="replace").strip().splitlines()[-8:])
            msg = f"worker {i} exited with {proc.returncode} during the scale-out bench; its last lines:\n{tail}"
            raise BenchError(msg)


def _wait_for_steps(procs: list[tuple[subprocess.Popen[bytes], Path]], urls: list[str], steps: int,
                    timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _check_alive(procs)
        try:
            if all(s.steps >= steps for s in (_scrape(u) for u in urls)):
                return
        except OSError:  # not listening yet: the process is still importing TensorFlow
            pass
        time.sleep(0.5)
    msg = f"the workers did not all reach {steps} steps within {timeout_s:.0f} s (bench.scaleout.start_timeout_s)"
    raise BenchError(msg)
