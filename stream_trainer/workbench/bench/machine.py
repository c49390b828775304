"""What the numbers were measured on: cores, memory, load, versions, resident memory."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import os
import platform
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _proc_field(path: str, name: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _installed(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def describe() -> dict[str, Any]:
    """Cores this process may use (``nproc``), memory, CPU model and the software versions."""
    import confluent_kafka
    import keras
    import numpy
    import PIL
    import tensorflow as tf

    from stream_trainer.learn.precision import visible_gpus

    mem_kb = _proc_field("/proc/meminfo", "MemTotal").split()
    nproc = len(os.sched_getaffinity(0))
    cpu = _proc_field("/proc/cpuinfo", "model name")
    gpus = [g.name for g in visible_gpus()]
    tfio = _installed("tensorflow-io")  # None on the Python 3.13 stack, which has no tensorflow-io
    return {
        # What trains: the GPU(s) TensorFlow sees, else the CPU cores this process may use.
        "device": f"GPU: {', '.join(gpus)}" if gpus else f"CPU: {cpu or 'unknown'}, {nproc} cores",
        "gpus": gpus,
        "nproc": nproc,
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(int(mem_kb[0]) / 1024**2, 1) if mem_kb else None,
        "platform": platform.platform(),
        "versions": {
            "python": sys.version.split()[0],
            "tensorflow": tf.__version__,
            **({"tensorflow_io": tfio, "tensorflow_io_librdkafka": "1.5.0 (bundled)"} if tfio else {}),
            "keras": keras.__version__,
            "confluent_kafka": confluent_kafka.__version__,
            "librdkafka": confluent_kafka.libversion()[0],
            "numpy": numpy.__version__,
            "pillow": PIL.__version__,
        },
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def reset_peak_rss() -> bool:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM); False if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mib() -> float:
    """VmHWM: the highest resident set since the process started or ``reset_peak_rss``."""
    hwm = _proc_field("/proc/self/status", "VmHWM").split()
    if hwm:
        return round(int(hwm[0]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def child_peak_rss_mib(pid: int) -> float:
    """VmHWM of another (running) process, e.g. a trainer the bench started; 0.0 where unknown."""
    hwm = _proc_field(f"/proc/{pid}/status", "VmHWM").split()
    return round(int(hwm[0]) / 1024, 1) if hwm else 0.0


def rss_mib() -> float:
    rss = _proc_field("/proc/self/status", "VmRSS").split()
    return round(int(rss[0]) / 1024, 1) if rss else 0.0


def process_peak_rss_mib() -> float:
    """ru_maxrss: the process's peak since start, whatever was reset."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


@dataclass
class Session:
    """One scenario's run: when it started and the load then; its report's header at the end."""

    began: float = field(default_factory=time.monotonic)
    load_before: list[float] = field(default_factory=load_average)
    started_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))

    def header(self, scenario: str, command: str) -> dict[str, Any]:
        """The fields every scenario's JSON starts with; the load is read again now."""
        return {"scenario": scenario, "command": command, "started_at": self.started_at,
                "seconds": round(time.monotonic() - self.began, 1), "machine": describe(),
                "load_average_before": self.load_before, "load_average_after": load_average()}
