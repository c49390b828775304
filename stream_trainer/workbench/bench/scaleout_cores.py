"""Where the scale-out bench's processes run: each worker on its own K cores (``--cores-per-worker``).

A figure "N workers train X times what one does" only says something about distribution when
every worker has the same cores whether it is alone or one of N: otherwise it mixes TensorFlow's
thread scaling into it (one worker with two threads against two workers with one each). So with
``--cores-per-worker K`` worker ``i`` of every job, the one-worker baseline included, runs on the
usable cores ``[i*K, (i+1)*K)``, with TensorFlow's intra- and inter-op pools and the decode map
sized to K. The affinity is set in the child between fork and exec (``sched_setaffinity``), so
every thread TensorFlow, tf.data and librdkafka start later inherits it; the bench reads it back
from ``/proc/<pid>/task/*/status`` during the window instead of trusting that it held.

The broker (when the bench started it) and the bench process itself (it produced the topic
before the first job; during the windows it only scrapes /metrics) go on the cores no worker of
the largest job uses. Where none are left (2 cores, K=1, 2 workers) they are left unpinned and
share every core with the workers; the report says so.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stream_trainer.errors import ConfigError

log = logging.getLogger(__name__)

STOP_GRACE_S = 30.0


@dataclass(frozen=True)
class Placement:
    """The cores of each worker of the largest job and those left for the broker and the bench."""

    cores_per_worker: int
    usable: list[int]
    workers: list[list[int]]
    others: list[int]  # empty: the broker and the bench share the workers' cores

    def worker_cores(self, index: int) -> list[int]:
        return self.workers[index]

    def describe(self, broker: str) -> dict[str, Any]:
        """The placement for the report; ``broker`` is "local" (started by the bench) or "external"."""
        who = {"local": "the broker (started by the bench) and the bench process",
               "external": "the bench process"}[broker]
        if self.others:
            where = f"{who} on core{'s' * (len(self.others) > 1)} {cpu_list(self.others)}, which no worker uses"
        else:
            share = "they share" if broker == "local" else "it shares"
            where = (f"{who} unpinned: no core is left over ({len(self.usable)} usable, {len(self.workers)} x "
                     f"{self.cores_per_worker} for the workers), so {share} cores {cpu_list(self.usable)} with "
                     f"the workers")
        if broker == "external":
            where += "; the broker is external (not placed by the bench)"
        return {"cores_per_worker": self.cores_per_worker, "usable": cpu_list(self.usable),
                "workers": [cpu_list(c) for c in self.workers], "others": cpu_list(self.others),
                "shared": where}


def plan(counts: list[int], cores_per_worker: int, usable: list[int] | None = None) -> Placement:
    """Give each worker of the largest job its own ``cores_per_worker`` cores; refuse what does not fit."""
    cores = sorted(os.sched_getaffinity(0)) if usable is None else sorted(usable)
    most = max(counts)
    if cores_per_worker < 1:
        msg = f"--cores-per-worker must be >= 1 (got {cores_per_worker})"
        raise ConfigError(msg)
    if most * cores_per_worker > len(cores):
        fix = (f"lower it to at most {len(cores) // most}" if len(cores) >= most
               else f"run at most {len(cores)} workers with 1 core each")
        msg = (f"--cores-per-worker {cores_per_worker} does not fit this host: {most} workers x "
               f"{cores_per_worker} cores needs {most * cores_per_worker}, and {len(cores)} are usable "
               f"({cpu_list(cores)}); {fix}")
        raise ConfigError(msg)
    k = cores_per_worker
    return Placement(k, cores, [cores[i * k:(i + 1) * k] for i in range(most)], cores[most * k:])


def cpu_list(cores: list[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``"0-2,5"``, the kernel's Cpus_allowed_list format."""
    ranges: list[str] = []
    for c in sorted(cores):
        if ranges and ranges[-1].split("-")[-1] == str(c - 1):
            ranges[-1] = f"{ranges[-1].split('-')[0]}-{c}"
        else:
            ranges.append(str(c))
    return ",".join(ranges)


def parse_cpu_list(text: str) -> list[int]:
    """``"0-2,5"`` -> ``[0, 1, 2, 5]``."""
    out: list[int] = []
    for part in text.strip().split(","):
        if part:
            lo, _, hi = part.partition("-")
            out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def _status_field(path: Path, name: str) -> str:
    for line in path.read_text().splitlines():
        if line.startswith(name + ":"):
            return line.split(":", 1)[1].strip()
    return ""


def affinity_of(pid: int) -> dict[str, Any]:
    """What the kernel says: the process's Cpus_allowed_list, and how many of its threads have another."""
    own = _status_field(Path(f"/proc/{pid}/status"), "Cpus_allowed_list")
    lists = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            lists.append(_status_field(task / "status", "Cpus_allowed_list"))
        except OSError:  # the thread ended meanwhile
            continue
    return {"cpus_allowed_list": own, "threads": len(lists), "threads_elsewhere": sum(x != own for x in lists)}


def pin(pid: int, cores: list[int]) -> int:
    """Move every thread of a running process to ``cores`` (threads it starts later inherit); threads moved."""
    moved = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cores)
            moved += 1
        except (ProcessLookupError, FileNotFoundError):  # the thread ended meanwhile
            continue
    return moved


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (for the bench: the local broker's JVM, before any worker)."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            # Field 4 of stat is the parent; the command name before it may hold spaces: split after ")".
            if int((p / "stat").read_text().rpartition(")")[2].split()[1]) == pid:
                out.append(int(p.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def die_with_parent() -> None:
    """Runs in the child before exec: Linux sends it SIGTERM if the bench dies first."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _child_setup(cores: list[int] | None) -> Callable[[], None]:
    def setup() -> None:
        # In the child, before exec: the interpreter and every thread it will start inherit it.
        if cores:
            os.sched_setaffinity(0, cores)
        die_with_parent()

    return setup


def launch(argv: list[str], env: dict[str, str], log_path: Path, cores: list[int] | None) -> subprocess.Popen[bytes]:
    """Start ``argv`` on ``cores`` (None: wherever the bench may run), output to ``log_path``."""
    with open(log_path, "wb") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=_child_setup(cores))


def stop_all(procs: list[subprocess.Popen[bytes]]) -> float:
    """SIGTERM every process (together: workers stop by a collective vote), SIGKILL after the grace; seconds."""
    t0 = time.monotonic()
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, STOP_GRACE_S - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            log.warning("pid %d did not stop within %.0f s of SIGTERM; killing it", proc.pid, STOP_GRACE_S)
            proc.kill()
            proc.wait()
    return time.monotonic() - t0
