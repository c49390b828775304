"""What the chaos soak reads from a trainer: ``/proc/<pid>`` and the trainer's own ``/metrics``.

A gauge the trainer does not serve (yet) is recorded as None, never as 0: a missing figure must
not pass for a flat one.
"""

from __future__ import annotations

import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path

MIB = 1024 * 1024
CONSUMERS = "stream_trainer_kafka_consumers"  # live librdkafka consumers in the process
TRACES = "stream_trainer_function_traces"  # tf.function traces so far
WATCHDOGS = "stream_trainer_collective_watchdog_threads"  # TensorFlow's sleeping collective timeout threads
STEP = "stream_trainer_global_step"
READER_RESTARTS = "stream_trainer_source_restarts_total"  # readers restarted or replaced by the stall watchdog


@dataclass(frozen=True)
class Sample:
    """One worker process at one moment."""

    t_s: float  # since the soak started
    phase: int  # index into the soak's phases
    worker: int  # index in the job
    pid: int
    up_s: float  # since this process started: samples early in a process's life are warm-up
    rss_mib: float | None
    threads: int | None
    fds: int | None
    consumers: float | None
    traces: float | None
    step: float | None
    watchdogs: float | None = None  # of ``threads``: TensorFlow's, one pair per recent collective op
    reader_restarts: float | None = None  # in this process so far: a retired reader holds its sockets a while

    @property
    def own_threads(self) -> float | None:
        """Threads less TensorFlow's collective watchdogs: what follows the round rate is taken out,
        what is left must stay flat (``learn/watchdogs.py``). Raw threads when the gauge is not served."""
        if self.threads is None or self.watchdogs is None:
            return self.threads
        return self.threads - self.watchdogs


def _status(pid: int) -> tuple[float | None, int | None]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None, None
    rss = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    threads = re.search(r"^Threads:\s+(\d+)", text, re.M)
    return (int(rss.group(1)) * 1024 / MIB if rss else None, int(threads.group(1)) if threads else None)


def _fds(pid: int) -> int | None:
    try:
        return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return None


def scrape(port: int, timeout_s: float = 2.0) -> str:
    """The trainer's /metrics page, or "" while it is not serving."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as resp:
            return str(resp.read().decode())
    except Exception:  # noqa: BLE001 - refused, reset, a torn response from a dying process: not serving
        return ""


def gauge(text: str, name: str) -> float | None:
    """Sum of every sample of ``name`` on the page; None when the page has no such metric."""
    values = [float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M)]
    return sum(values) if values else None


def sample(t_s: float, phase: int, worker: int, pid: int, up_s: float, metrics_port: int) -> Sample:
    """Read one worker's resources now."""
    rss, threads = _status(pid)
    page = scrape(metrics_port)
    return Sample(round(t_s, 1), phase, worker, pid, round(up_s, 1), None if rss is None else round(rss, 1),
                  threads, _fds(pid), gauge(page, CONSUMERS), gauge(page, TRACES), gauge(page, STEP),
                  gauge(page, WATCHDOGS), gauge(page, READER_RESTARTS))
