"""The soak as the trainers' supervisor: start a job of N workers, restart it whenever one exits.

A job is restarted as a whole, as docs/operations.md says a supervisor must (after a lost worker
TensorFlow needs fresh processes): when one worker exits, the others are given
``drain_s`` to notice (they exit non-zero naming the lost one), then whoever is left is killed,
and every worker starts again on fresh ports. Every exit is recorded with its code and why it
happened: the soak's SIGKILL, the loss of a peer, the supervisor's kill after the drain, or
nothing the soak did ("unprompted"), and with the last lines the process wrote (its one-line error).

Exits seen in one poll are classified killed-first: a worker that exits in the same second as a
peer the soak SIGKILLed exited because it lost that peer (``peer_lost``), whatever the order in
which the soak happened to look at them.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from stream_trainer.workbench.broker import free_port
from stream_trainer.workbench.soak import probe

# Settings for worker ``index`` of a job: (index, worker addresses, metrics port, trained log) -> YAML data.
SettingsFor = Callable[[int, list[str], int, Path], dict[str, Any]]


def child_env() -> dict[str, str]:
    """The YAML names the broker: no inherited variable may point a program elsewhere."""
    return {k: v for k, v in os.environ.items()
            if k not in {"KAFKA_BOOTSTRAP", "STREAM_TRAINER_BOOTSTRAP", "PET_PRODUCER_BOOTSTRAP"}}


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen[bytes]
    port: int
    trained_log: Path
    started: float = field(default_factory=time.monotonic)
    log_path: Path | None = None  # stdout and stderr, shared by every run of this worker index
    log_from: int = 0  # where this run's output starts in it
    killed_by_soak: bool = False
    exit_seen: bool = False

    def exit_message(self, n: int = 3, max_chars: int = 600) -> dict[str, Any]:
        """The last ``n`` non-empty lines this process wrote, and its ``stream-trainer: error:`` line
        ("" when it printed none: a SIGKILL, a clean stop)."""
        if self.log_path is None or not self.log_path.exists():
            return {"error": "", "last_lines": []}
        with self.log_path.open("rb") as f:
            f.seek(self.log_from)
            tail = f.read()[-64 * 1024:].decode(errors="replace")
        lines = [line[:max_chars] for line in tail.splitlines() if line.strip()]
        error = next((line for line in reversed(lines) if line.startswith("stream-trainer: error:")), "")
        return {"error": error, "last_lines": lines[-n:]}


def classify(killed_by_soak: bool, peer_gone: bool) -> str:
    """Why a worker exited: the soak killed it, a peer of its job had gone first, or neither."""
    if killed_by_soak:
        return "soak_kill"
    return "peer_lost" if peer_gone else "unprompted"


class Job:
    """One phase's trainers: ``size`` workers of one job (``size`` 1 = a single trainer)."""

    def __init__(self, phase: int, size: int, settings_for: SettingsFor, out: Path, clock: Callable[[], float],
                 drain_s: float) -> None:
        self.phase, self.size, self.settings_for, self.out, self.clock = phase, size, settings_for, out, clock
        self.drain_s = drain_s
        self.run = 0
        self.workers: list[Worker] = []
        self.trained_logs: list[Path] = []
        self.exits: list[dict[str, Any]] = []
        self.restarts = 0
        self._draining_since: float | None = None
        self._start()

    def _start(self) -> None:
        addresses = [f"127.0.0.1:{free_port()}" for _ in range(self.size)] if self.size > 1 else []
        self.workers = []
        for i in range(self.size):
            port = free_port()
            log = self.out / "trained" / f"phase{self.phase}-run{self.run}-w{i}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            self.trained_logs.append(log)
            config = self.out / "configs" / f"phase{self.phase}-run{self.run}-w{i}.yaml"
            config.parent.mkdir(parents=True, exist_ok=True)
            config.write_text(yaml.safe_dump(self.settings_for(i, addresses, port, log), sort_keys=False))
            log_path = self.out / "logs" / f"phase{self.phase}-w{i}.log"
            with log_path.open("ab") as out:
                out.write(f"\n=== soak: phase {self.phase} run {self.run} worker {i} starts ===\n".encode())
                out.flush()
                log_from = out.tell()
                proc = subprocess.Popen([sys.executable, "-m", "stream_trainer.cli", "run", "--config", str(config)],
                                        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        env=child_env())
            self.workers.append(Worker(i, proc, port, log, log_path=log_path, log_from=log_from))
        self.run += 1

    def kill_one(self, rng: random.Random) -> str:
        """SIGKILL one live worker at random (the fault); the next ``poll`` restarts the job."""
        alive = [w for w in self.workers if w.proc.poll() is None]
        if not alive:
            return "none alive"
        victim = rng.choice(alive)
        victim.killed_by_soak = True
        victim.proc.send_signal(signal.SIGKILL)
        return f"worker {victim.index} (pid {victim.proc.pid}) of {self.size}"

    def _record(self, worker: Worker, cause: str) -> None:
        worker.exit_seen = True
        self.exits.append({"t_s": round(self.clock(), 1), "phase": self.phase, "run": self.run - 1,
                           "worker": worker.index, "code": worker.proc.returncode, "cause": cause,
                           "lived_s": round(time.monotonic() - worker.started, 1), **worker.exit_message()})

    def poll(self) -> None:
        """Record exits; once every worker of a broken job is gone, start the job again."""
        first = self._draining_since is None
        exited = [w for w in self.workers if not w.exit_seen and w.proc.poll() is not None]
        for w in sorted(exited, key=lambda w: not w.killed_by_soak):  # the soak's victims first
            self._record(w, classify(w.killed_by_soak, self._draining_since is not None))
            if self._draining_since is None:
                self._draining_since = time.monotonic()
        if self._draining_since is None:
            return
        alive = [w for w in self.workers if w.proc.poll() is None]
        if alive and (first or time.monotonic() - self._draining_since < self.drain_s):
            return
        for w in alive:  # they did not notice the lost peer in time
            w.proc.kill()
            w.proc.wait()
            self._record(w, "supervisor_kill")
        self._draining_since = None
        self.restarts += 1
        self._start()

    def serving(self) -> bool:
        """Every worker alive and answering on /metrics: past its start-up, its SIGTERM handler set."""
        return all(w.proc.poll() is None and probe.scrape(w.port) for w in self.workers)

    def samples(self, t_s: float) -> list[probe.Sample]:
        now = time.monotonic()
        return [probe.sample(t_s, self.phase, w.index, w.proc.pid, now - w.started, w.port)
                for w in self.workers if w.proc.poll() is None]

    def stop(self, timeout_s: float = 90.0) -> bool:
        """SIGTERM every worker (final checkpoint, exit 0); True when all exited 0 in time."""
        for w in self.workers:
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        clean = self._draining_since is None
        deadline = time.monotonic() + timeout_s
        for w in self.workers:
            try:
                w.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
                clean = False
            if not w.exit_seen:
                self._record(w, "stop")
                clean = clean and w.proc.returncode == 0
        return clean
