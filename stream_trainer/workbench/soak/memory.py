"""``make soak``: producer and trainer as processes for a long time; is the trainer's memory flat?

A local Kafka 3.9.1 broker (or ``KAFKA_BOOTSTRAP``), ``pet-producer`` replaying synthetic images
forever and ``stream-trainer run`` training, evaluating, checkpointing and exporting on a short
schedule, so that every code path that could leak runs hundreds of times. The trainer's resident
memory is read from ``/proc/PID/status`` every few seconds. After a warm-up (TensorFlow grows its
allocator pools during the first evaluations and checkpoints) the RSS must be flat: the
least-squares slope over the rest of the run must stay at or below ``MAX_SLOPE_MIB_PER_HOUR``,
judged only when the rest of the run is at least ``MIN_STEADY_S`` long.

Writes ``rss.json`` (every sample and the verdict) and ``rss.png`` (RSS over time, warm-up shaded,
the fitted line) into ``workdir``; prints the slope; exits 1 when memory grows, when the run was
too short to judge, or when a program dies.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import yaml

from stream_trainer.config import load as load_config
from stream_trainer.kafka import Cluster
from stream_trainer.workbench.broker import LocalBroker, free_port

log = logging.getLogger(__name__)

SAMPLE_EVERY_S = 5.0
# Warm-up: a fifth of the run, at least 90 s (first evaluations, checkpoints and exports).
WARMUP_FRACTION = 0.2
WARMUP_MIN_S = 90.0
# "Flat": the fitted slope after the warm-up is at most 5 MiB/h. The trainer is a daemon that
# should run for a week between deploys in a container sized at about twice its steady RSS
# (~710 MiB at the soak's shapes): 5 MiB/h x 168 h = 840 MiB, about one more steady RSS. The
# bound is a rate because a total-growth bound means a different rate for every run length (the
# old 35 MiB over a 30-minute run's 24 steady minutes let 88 MiB/h, 2 GiB a day, pass as flat).
MAX_SLOPE_MIB_PER_HOUR = 5.0
# A rate can only be judged over enough time: at the bound, 20 minutes grow 1.7 MiB, several
# times the ~0.5 MiB spread of settled RSS samples; a shorter window (a 5-minute run extrapolated
# +7 MiB of settling into +116 MiB/h) cannot tell a leak from noise, so it gets no verdict.
MIN_STEADY_S = 20 * 60.0
MIB = 1024 * 1024


@dataclass(frozen=True)
class Sample:
    t_s: float
    trainer_rss_mib: float
    producer_rss_mib: float
    trainer_step: float  # from the trainer's /metrics; -1 while it is not serving yet


def _settings(bootstrap: str, state: Path, run_id: str, metrics_port: int) -> dict[str, Any]:
    """Small shapes that still exercise everything: eval, snapshots, checkpoints, exports, lag."""
    return {
        "kafka": {"bootstrap_servers": bootstrap, "connect_timeout_s": 30},
        "topics": {"train": f"soak-{run_id}", "eval": f"soak-{run_id}-eval", "dead_letter": f"soak-{run_id}-dlq",
                   "partitions": 2},
        "producer": {
            "source": {"kind": "synthetic", "count": 200, "min_size": 64, "max_size": 128, "eval_fraction": 0.1},
            "rate": 15, "passes": 0, "metrics": {"port": 0}},
        "trainer": {
            "source": {"group_id": f"soak-{run_id}"},
            "pipeline": {"image_size": 64, "batch_size": 8, "shuffle_buffer": 64},
            "model": {"base_filters": 8, "depth": 3},
            "loop": {"eval_every_steps": 100, "eval_max_images": 16, "eval_wait_s": 30, "log_every_s": 30,
                     "snapshot_dir": str(state / "snapshots"),
                     "tensorboard_dir": str(state / "tensorboard")},
            "checkpoint": {"dir": str(state / "checkpoints"), "export_dir": str(state / "export"),
                           "every_steps": 100, "every_seconds": 30},
            "metrics": {"host": "127.0.0.1", "port": metrics_port}},
    }


def _rss_mib(pid: int) -> float:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    m = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) * 1024 / MIB if m else 0.0


def _global_step(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:
            text = resp.read().decode()
    except OSError:
        return -1.0
    # Labelled since the worker label (metrics.exposition): `stream_trainer_global_step{worker="0"} 42.0`.
    m = re.search(r"^stream_trainer_global_step(?:\{[^}]*\})? (\S+)$", text, re.M)
    return float(m.group(1)) if m else -1.0


def _spawn(args: list[str], out: IO[bytes]) -> subprocess.Popen[bytes]:
    # The YAML names the broker; no inherited variable may point a program elsewhere.
    env = {k: v for k, v in os.environ.items()
           if k not in {"KAFKA_BOOTSTRAP", "STREAM_TRAINER_BOOTSTRAP", "PET_PRODUCER_BOOTSTRAP"}}
    return subprocess.Popen([sys.executable, "-m", *args], stdout=out, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env)


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 60.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def slope_mib_per_hour(samples: list[Sample]) -> float:
    """Least-squares slope of the trainer's RSS over ``samples``, in MiB per hour."""
    n = len(samples)
    if n < 2:
        return 0.0
    mt = sum(s.t_s for s in samples) / n
    mr = sum(s.trainer_rss_mib for s in samples) / n
    var = sum((s.t_s - mt) ** 2 for s in samples)
    if var == 0:
        return 0.0
    cov = sum((s.t_s - mt) * (s.trainer_rss_mib - mr) for s in samples)
    return cov / var * 3600.0


def verdict(samples: list[Sample], duration_s: float) -> dict[str, Any]:
    """Slope of the trainer's RSS after the warm-up and whether it is flat, growing or too short to judge."""
    warmup_s = max(WARMUP_MIN_S, WARMUP_FRACTION * duration_s)
    steady = [s for s in samples if s.t_s >= warmup_s and s.trainer_rss_mib > 0]
    slope = slope_mib_per_hour(steady)
    span_s = steady[-1].t_s - steady[0].t_s if len(steady) >= 2 else 0.0
    mean = sum(s.trainer_rss_mib for s in steady) / len(steady) if steady else 0.0
    # A pool that is still settling bends the line; the later half's slope tells settling from a leak.
    late = [s for s in steady if s.t_s >= (steady[0].t_s + steady[-1].t_s) / 2] if steady else []
    if span_s + SAMPLE_EVERY_S < MIN_STEADY_S:  # one sample interval of slack: samples start off the mark
        state = "too_short"
    else:
        state = "flat" if slope <= MAX_SLOPE_MIB_PER_HOUR else "growing"
    return {"warmup_s": warmup_s, "steady_samples": len(steady), "steady_s": round(span_s, 1),
            "slope_mib_per_hour": round(slope, 2), "late_half_slope_mib_per_hour": round(slope_mib_per_hour(late), 2),
            "fitted_growth_after_warmup_mib": round(slope * span_s / 3600.0, 2),
            "max_slope_mib_per_hour": MAX_SLOPE_MIB_PER_HOUR, "min_steady_s": MIN_STEADY_S,
            "mean_rss_after_warmup_mib": round(mean, 1),
            "rss_at_warmup_end_mib": steady[0].trainer_rss_mib if steady else None,
            "rss_at_end_mib": steady[-1].trainer_rss_mib if steady else None,
            "verdict": state, "flat": state == "flat"}


def shortest_judged_minutes() -> float:
    """The shortest ``--minutes`` whose time after the warm-up reaches ``MIN_STEADY_S``."""
    return max(MIN_STEADY_S + WARMUP_MIN_S, MIN_STEADY_S / (1 - WARMUP_FRACTION)) / 60.0


def plot(samples: list[Sample], result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s.t_s / 60 for s in samples]
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    ax.plot(minutes, [s.trainer_rss_mib for s in samples], label="trainer RSS", color="tab:blue")
    ax.plot(minutes, [s.producer_rss_mib for s in samples], label="producer RSS", color="tab:gray", ls="--")
    ax.axvspan(0, result["warmup_s"] / 60, color="0.9", label="warm-up")
    steady = [s for s in samples if s.t_s >= result["warmup_s"] and s.trainer_rss_mib > 0]
    if len(steady) >= 2:
        slope_per_s = result["slope_mib_per_hour"] / 3600.0
        mt = sum(s.t_s for s in steady) / len(steady)
        mr = sum(s.trainer_rss_mib for s in steady) / len(steady)
        xs = [steady[0].t_s, steady[-1].t_s]
        ax.plot([x / 60 for x in xs], [mr + slope_per_s * (x - mt) for x in xs], color="tab:red",
                label=f"fit after warm-up: {result['slope_mib_per_hour']:+.1f} MiB/h")
    ax.set_xlabel("minutes")
    ax.set_ylabel("resident memory (MiB)")
    ax.set_ylim(bottom=0)
    state = {"flat": "flat", "growing": "GROWING", "too_short": "not judged (run too short)"}[result["verdict"]]
    ax.set_title(f"stream-trainer soak: trainer memory {state} "
                 f"({result['slope_mib_per_hour']:+.1f} MiB/h after warm-up, "
                 f"limit {result['max_slope_mib_per_hour']:g} MiB/h)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _sample(trainer: subprocess.Popen[bytes], producer: subprocess.Popen[bytes], port: int,
            duration_s: float) -> tuple[list[Sample], str]:
    """Sample until ``duration_s`` passes or a program exits; return the samples and why it ended."""
    samples: list[Sample] = []
    start = time.monotonic()
    last_report = start
    while True:
        now = time.monotonic()
        for name, proc in (("trainer", trainer), ("producer", producer)):
            if proc.poll() is not None:
                return samples, f"{name} exited with {proc.returncode}"
        samples.append(Sample(round(now - start, 1), round(_rss_mib(trainer.pid), 1), round(_rss_mib(producer.pid), 1),
                              _global_step(port)))
        if now - last_report >= 60:
            last_report = now
            s = samples[-1]
            log.info("soak: %.1f min, trainer RSS %.0f MiB, step %.0f", s.t_s / 60, s.trainer_rss_mib, s.trainer_step)
        if now - start >= duration_s:
            return samples, ""
        time.sleep(max(0.0, SAMPLE_EVERY_S - (time.monotonic() - now)))


def main(minutes: float, workdir: Path) -> int:
    """Run the soak for ``minutes``; write ``rss.json`` and ``rss.png`` into ``workdir``; 0 if flat."""
    workdir.mkdir(parents=True, exist_ok=True)
    state = workdir / "state"
    shutil.rmtree(state, ignore_errors=True)  # a new topic each run: old checkpoints would not match it
    state.mkdir()
    run_id = uuid.uuid4().hex[:8]
    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
    if not bootstrap:
        broker = LocalBroker(state / "kafka")
        bootstrap = broker.start()
    port = free_port()
    settings = _settings(bootstrap, state, run_id, port)
    config = state / "soak.yaml"
    config.write_text(yaml.safe_dump(settings, sort_keys=False))
    # Created before either program starts: the trainer refuses a topic that does not exist yet.
    cluster = Cluster(load_config(config).kafka)
    try:
        cluster.wait_until_reachable()
        t = settings["topics"]
        cluster.ensure_topics({t["train"]: t["partitions"], t["eval"]: 1, t["dead_letter"]: 1})
    finally:
        cluster.close()
    duration_s = minutes * 60.0
    log.info("soak: %.1f min against %s; logs in %s", minutes, bootstrap, workdir)
    if minutes < shortest_judged_minutes():
        log.warning("soak: %.1f min is too short to judge memory (at least %.0f min needed); this run only "
                    "records RSS", minutes, shortest_judged_minutes())
    problem = ""
    samples: list[Sample] = []
    try:
        with (workdir / "producer.log").open("wb") as plog, (workdir / "trainer.log").open("wb") as tlog:
            producer = _spawn(["producer.cli", "--config", str(config)], plog)
            trainer = _spawn(["stream_trainer.cli", "run", "--config", str(config)], tlog)
            try:
                samples, problem = _sample(trainer, producer, port, duration_s)
            except KeyboardInterrupt:
                problem = "interrupted"
            finally:
                _stop(trainer)
                _stop(producer)
            if trainer.returncode not in (0, None) and not problem:
                problem = f"trainer exited with {trainer.returncode} on SIGTERM"
    finally:
        if broker is not None:
            broker.stop()

    result = verdict(samples, duration_s)
    steps = [s.trainer_step for s in samples if s.trainer_step >= 0]
    result.update(minutes=minutes, sample_every_s=SAMPLE_EVERY_S, trainer_steps=max(steps) if steps else 0,
                  problem=problem, samples=[asdict(s) for s in samples])
    (workdir / "rss.json").write_text(json.dumps(result, indent=1))
    plot(samples, result, workdir / "rss.png")

    print(f"soak: {minutes:g} min, {len(samples)} samples, trainer reached step {result['trainer_steps']:.0f}")
    print(f"soak: trainer RSS {result['rss_at_warmup_end_mib']} MiB after the {result['warmup_s']:.0f} s warm-up, "
          f"{result['rss_at_end_mib']} MiB at the end")
    judged = {"flat": "flat", "growing": "NOT flat",
              "too_short": f"too short to judge ({result['steady_s'] / 60:.1f} min after the warm-up, at least "
                           f"{MIN_STEADY_S / 60:.0f} needed: run --minutes {shortest_judged_minutes():.0f} or more)"}
    print(f"soak: slope after warm-up {result['slope_mib_per_hour']:+.2f} MiB/h "
          f"(fitted growth {result['fitted_growth_after_warmup_mib']:+.2f} MiB, "
          f"limit {MAX_SLOPE_MIB_PER_HOUR:g} MiB/h): {judged[result['verdict']]}; "
          f"later half {result['late_half_slope_mib_per_hour']:+.2f} MiB/h")
    print(f"soak: wrote {workdir / 'rss.png'} and {workdir / 'rss.json'}")
    if problem:
        print(f"soak: FAILED: {problem} (see {workdir}/*.log)")
        return 1
    return 0 if result["flat"] else 1
