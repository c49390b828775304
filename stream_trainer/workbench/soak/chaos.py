"""``stream-trainer soak --chaos``: producer and trainers for an hour under a fault every 30-60 s.

A local Kafka 3.9.1 broker (or ``KAFKA_BOOTSTRAP``; the broker faults then drop out of the draw),
``pet-producer`` replaying synthetic images forever, and the trainer supervised by the soak the
way compose would (restart on any exit): one worker for the first phase, a two-worker job for the
next (``--workers 1,2``: the run is split evenly between the phases; the job changes shape with
a SIGTERM, i.e. a final checkpoint, and resumes from it). Faults come on a seeded schedule
(``faults.py``); every 5 s each worker's RSS, threads, open fds, librdkafka consumers,
tf.function traces and step are sampled (``probe.py``). At the end the producers stop, the
trainers get up to ``DRAIN_S`` to train everything the topic holds, stop with SIGTERM, and the
topic, the dead-letter topic and every trained log are joined (``judge.py``).

Writes ``chaos.json`` (every sample, fault, exit and the verdict) and ``chaos.png`` into ``out``;
prints the verdict; returns 0 only when it passed.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import asdict
from pathlib import Path
from typing import Any, TypeVar

from confluent_kafka import KafkaException

from stream_trainer.config import KafkaConfig
from stream_trainer.errors import StreamTrainerError
from stream_trainer.kafka import Cluster
from stream_trainer.threads import Threads
from stream_trainer.workbench.broker import LocalBroker
from stream_trainer.workbench.soak import duplicates, faults, judge, ledger, report
from stream_trainer.workbench.soak.job import Job, child_env
from stream_trainer.workbench.soak.probe import Sample

log = logging.getLogger(__name__)
T = TypeVar("T")

SAMPLE_EVERY_S = 5.0
PARTITIONS = 4  # two per worker in the two-worker phase
BATCH = 4
CHECKPOINT_EVERY = 5  # steps: one checkpoint interval of work is BATCH x CHECKPOINT_EVERY x workers
STALL_TIMEOUT_S = 15.0
PEER_TIMEOUT_S = 30.0
DRAIN_S = 300.0
START_S = 180.0  # a trainer (two on 2 cores) is serving /metrics well within this


def _settings(bootstrap: str, topics: dict[str, str], state: Path) -> dict[str, Any]:
    """The fault suite's tiny shapes (a trainer starts in seconds), with evaluation and exports on."""
    return {
        "kafka": {"bootstrap_servers": bootstrap, "connect_timeout_s": 30},
        "topics": {**topics, "partitions": PARTITIONS},
        "producer": {
            "source": {"kind": "synthetic", "count": 200, "min_size": 48, "max_size": 64, "eval_fraction": 0.1},
            "rate": 10, "passes": 0, "partitioner": "round_robin", "metrics": {"port": 0}},
        "trainer": {
            "source": {"group_id": f"soak-{topics['train']}", "stall_timeout_s": STALL_TIMEOUT_S,
                       "metadata_refresh_s": 10, "poll_timeout_ms": 500},
            "pipeline": {"image_size": 32, "batch_size": BATCH, "shuffle_buffer": 0},
            "model": {"base_filters": 4, "depth": 2},
            "replay": {"size_mib": 4},
            "loop": {"eval_every_steps": 50, "eval_max_images": 16, "eval_wait_s": 5, "log_every_s": 30,
                     "snapshot_dir": str(state / "snapshots"),
                     "tensorboard_dir": str(state / "tensorboard")},
            "checkpoint": {"dir": str(state / "checkpoints"), "export_dir": str(state / "export"),
                           "every_steps": CHECKPOINT_EVERY, "every_seconds": 0, "keep": 3, "export_every_s": 120},
            "metrics": {"host": "127.0.0.1", "port": 0}},
    }


def _settings_for(base: dict[str, Any], state: Path, phase: int, size: int) -> Any:
    def make(index: int, addresses: list[str], port: int, trained_log: Path) -> dict[str, Any]:
        data = json.loads(json.dumps(base))
        trainer = data["trainer"]
        trainer["metrics"]["port"] = port
        trainer["loop"]["trained_log"] = str(trained_log)
        trainer["cluster"] = {"workers": addresses, "index": index, "peer_timeout_s": PEER_TIMEOUT_S,
                              "scratch_dir": str(state / f"scratch-{phase}-{index}")}
        return data
    return make


def _injection(record: dict[str, Any], kind: str, stage: faults.Stage, rng: random.Random) -> Callable[[], None]:
    def run() -> None:
        record.update(faults.inject(kind, stage, rng))
    return run


class Soak:
    """One chaos run: its broker, topics, producer, jobs, samples and fault records."""

    def __init__(self, minutes: float, workers: list[int], seed: int, out: Path) -> None:
        self.minutes, self.workers, self.seed, self.out = minutes, workers, seed, out
        self.duration_s = minutes * 60.0
        self.state = out / "state"
        self.t0 = time.monotonic()
        self.samples: list[Sample] = []
        self.fault_records: list[dict[str, Any]] = []
        self.exits: list[dict[str, Any]] = []
        self.saved_letters: dict[tuple[int, int], str] = {}
        self.problems: list[str] = []
        self.producer_restarts = 0
        self.broker: LocalBroker | None = None
        self.job: Job | None = None
        self.jobs: list[Job] = []
        self.topic: set[tuple[int, int]] = set()
        self.letters: dict[tuple[int, int], str] = {}
        self.phases: list[tuple[float, float]] = []
        self._calls: queue.Queue[tuple[Callable[[], object], Future[object]]] = queue.Queue()

    def clock(self) -> float:
        return time.monotonic() - self.t0

    # --- set-up ----------------------------------------------------------------------------------

    def _prepare(self) -> str:
        # A new topic each run: old checkpoints and logs would not match it. Only what a soak
        # writes is removed, never the folder itself (``--out .`` must not empty a checkout).
        for name in ("state", "logs", "trained", "configs"):
            shutil.rmtree(self.out / name, ignore_errors=True)
        (self.out / "logs").mkdir(parents=True)
        self.state.mkdir()
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
        if not bootstrap:
            self.broker = LocalBroker(self.state / "kafka", heap="512m")
            bootstrap = self.broker.start()
        run_id = uuid.uuid4().hex[:8]
        self.topics = {"train": f"chaos-{run_id}", "eval": f"chaos-{run_id}-eval", "dead_letter": f"chaos-{run_id}-dlq"}
        cluster = Cluster(KafkaConfig(bootstrap_servers=bootstrap, connect_timeout_s=30))
        try:
            cluster.wait_until_reachable()
            cluster.ensure_topics({self.topics["train"]: PARTITIONS, self.topics["eval"]: 1,
                                   self.topics["dead_letter"]: 1})
        finally:
            cluster.close()
        return bootstrap

    def _start_producer(self) -> subprocess.Popen[bytes]:
        with (self.out / "logs" / "producer.log").open("ab") as out:
            return subprocess.Popen([sys.executable, "-m", "producer.cli", "--config", str(self.config)],
                                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=child_env())

    def _save_dead_letters(self) -> int:
        letters = ledger.dead_letters(self.bootstrap, self.topics["dead_letter"], self.topics["train"])
        self.saved_letters.update(letters)
        return len(letters)

    def _kill_trainer(self, rng: random.Random) -> str:
        return self.job.kill_one(rng) if self.job is not None else "no job"

    def on_main(self, call: Callable[[], object]) -> object:
        """Run ``call`` on the soak's main thread (which serves these between its rounds); its result.

        For the broker's restart: a child started from a fault's thread gets SIGTERM from Linux as
        soon as that thread ends (``die_with_parent``), which looks to every client like a broker
        that went away again right after it came back.
        """
        if threading.current_thread() is threading.main_thread():
            return call()
        done: Future[object] = Future()
        self._calls.put((call, done))
        return done.result(timeout=300)

    def _serve_calls(self) -> None:
        while True:
            try:
                call, done = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                done.set_result(call())
            except Exception as exc:  # noqa: BLE001 - handed to the fault that asked, which reports it
                done.set_exception(exc)

    def _await_fault(self, fault: threading.Thread | None, timeout_s: float = 180.0) -> None:
        """Wait for the fault under way to end, serving what it asks of the main thread meanwhile."""
        deadline = time.monotonic() + timeout_s
        while fault is not None and fault.is_alive() and time.monotonic() < deadline:
            self._serve_calls()
            fault.join(0.2)

    # --- the run ---------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        import yaml

        self.bootstrap = self._prepare()
        base = _settings(self.bootstrap, self.topics, self.state)
        self.config = self.out / "producer.yaml"
        self.config.write_text(yaml.safe_dump(base, sort_keys=False))
        kinds = tuple(k for k in faults.KINDS if self.broker is not None or k not in faults.NEEDS_LOCAL_BROKER)
        plan = faults.schedule(self.seed, self.duration_s, kinds)
        print(f"soak: chaos for {self.minutes:g} min against {self.bootstrap}, workers {self.workers} "
              f"({self.duration_s / len(self.workers) / 60:.1f} min each), seed {self.seed}; output in {self.out}")
        print("soak: fault schedule: " + ", ".join(f"{t / 60:.1f} min {k}" for t, k in plan), flush=True)
        stage = faults.Stage(self.bootstrap, self.broker, self.topics["train"], self.topics["eval"],
                             self.topics["dead_letter"], STALL_TIMEOUT_S, self._kill_trainer, self._save_dead_letters,
                             self.on_main)
        self.stage = stage
        rng = random.Random(self.seed + 1)
        threads = Threads()
        phase_s = self.duration_s / len(self.workers)
        self.phases = [(i * phase_s, (i + 1) * phase_s) for i in range(len(self.workers))]
        producer = self._start_producer()
        self.t0 = time.monotonic()
        fault: Any = None
        pending = list(plan)
        next_sample = 0.0
        try:
            for phase, size in enumerate(self.workers):
                end = self.phases[phase][1]
                self.job = Job(phase, size, _settings_for(base, self.state, phase, size), self.out, self.clock,
                               drain_s=PEER_TIMEOUT_S + 15)
                self.jobs.append(self.job)
                while self.clock() < end:
                    now = self.clock()
                    if threads.failure() is not None:
                        self.problems.append(str(threads.failure()))
                        break
                    self.job.poll()
                    self._serve_calls()
                    if producer.poll() is not None:
                        log.warning("soak: the producer exited with %s; restarting it", producer.returncode)
                        self.producer_restarts += 1
                        producer = self._start_producer()
                    if pending and pending[0][0] <= now and (fault is None or not fault.is_alive()):
                        due, kind = pending.pop(0)
                        record: dict[str, Any] = {"t_s": round(now, 1), "planned_s": due, "kind": kind}
                        self.fault_records.append(record)
                        log.info("soak: %.1f min: %s", now / 60, kind)
                        fault = threads.start(f"fault-{kind}", _injection(record, kind, stage, rng))
                    if now >= next_sample:
                        next_sample = now + SAMPLE_EVERY_S
                        self.samples.extend(self.job.samples(now))
                    time.sleep(0.5)
                self._await_fault(fault)  # a phase changes (or the soak ends) with no fault under way
                if phase + 1 < len(self.workers):
                    self._await_serving(self.job)
                    if not self.job.stop():
                        self.problems.append(f"phase {phase}'s job did not stop cleanly on SIGTERM")
            self._finish(producer)
        except Exception as exc:
            log.exception("soak: the soak itself failed")
            self.problems.append(f"the soak itself failed: {type(exc).__name__}: {exc}")
        finally:
            if producer.poll() is None:
                producer.kill()
            for job in self.jobs:
                for w in job.workers:
                    if w.proc.poll() is None:
                        w.proc.kill()
            if self.broker is not None:
                self.broker.cluster.node(1).resume()
                self.broker.stop()
        return self._result()

    def _await_serving(self, job: Job) -> None:
        """A job restarted just before a phase change is let finish its start-up: a SIGTERM during
        the imports ends a process before it can checkpoint, which is not the stop being tested."""
        deadline = time.monotonic() + START_S
        while not job.serving() and time.monotonic() < deadline:
            job.poll()
            time.sleep(1)

    def _finish(self, producer: subprocess.Popen[bytes]) -> None:
        """Stop producing, let the job train everything the topic holds, stop it, read the topics."""
        assert self.job is not None
        if self.broker is not None and not self.broker.running:
            self.broker.start()
        self._await_serving(self.job)
        producer.terminate()
        producer.wait(60)
        self.topic = _retrying(lambda: ledger.topic_offsets(self.bootstrap, self.topics["train"]))
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline:
            self.job.poll()
            trained = ledger.trained(self._trained_logs())
            letters = {**self.saved_letters, **self._dead_letters()}
            left = [o for o in self.topic if o not in trained and o not in letters]
            if not left:
                break
            log.info("soak: draining: %d of %d offsets neither trained nor dead-lettered yet (first %s)",
                     len(left), len(self.topic), sorted(left)[:5])
            time.sleep(5)
        else:
            self.problems.append(f"the job did not train everything the topic holds within {DRAIN_S:.0f} s")
        if not self.job.stop():
            self.problems.append("the last job did not stop cleanly on SIGTERM")
        self.letters = {**self.saved_letters, **self._dead_letters()}

    def _dead_letters(self) -> dict[ledger.Offset, str]:
        return _retrying(lambda: ledger.dead_letters(self.bootstrap, self.topics["dead_letter"], self.topics["train"]))

    def _trained_logs(self) -> list[Path]:
        return [p for job in self.jobs for p in job.trained_logs]

    def _result(self) -> dict[str, Any]:
        exits = [e for job in self.jobs for e in job.exits]
        restarts = sum(job.restarts for job in self.jobs)
        bound = sum(job.restarts * job.size * CHECKPOINT_EVERY * BATCH for job in self.jobs)
        trained = ledger.trained(self._trained_logs())
        added = [f["t_s"] for f in self.fault_records
                 if f["kind"] == "partitions_added" and f.get("ok") and "skipped" not in f]
        resources = judge.judge_resources(self.samples, self.phases, added)
        messages = judge.judge_messages(self.topic, trained, self.stage.bad, self.letters, bound)
        runs = [(job.phase, r) for job in self.jobs for r in range(job.run)]
        dups = duplicates.attribute(runs, duplicates.trainings(self._trained_logs()), exits, self.samples,
                                    self.topic, self.stage.bad, {job.phase: job.size for job in self.jobs},
                                    BATCH, CHECKPOINT_EVERY)
        missing = [f"fault {f['kind']} at {f['t_s']:.0f} s not injected: {f.get('error')}"
                   for f in self.fault_records if not f.get("ok")]
        causes: dict[str, int] = {}
        for e in exits:
            causes[e["cause"]] = causes.get(e["cause"], 0) + 1
        return {"minutes": self.minutes, "workers": self.workers, "seed": self.seed, "topics": self.topics,
                "phases": self.phases, "restarts": restarts, "exit_causes": causes,
                "producer_restarts": self.producer_restarts,
                "duplicate_bound_per_restart": f"{CHECKPOINT_EVERY} steps x {BATCH} rows x workers",
                "tolerances": {k: asdict(v) for k, v in judge.TOLERANCES.items()},
                "min_slope_window_s": judge.MIN_SLOPE_WINDOW_S, "partitions_added_s": added,
                "faults": self.fault_records, "exits": exits, "resources": resources, "messages": messages,
                "duplicates": dups, "transactional_messages": self.stage.transactional_offsets,
                "verdict": judge.verdict(resources, messages, self.problems + missing, dups),
                "samples": [asdict(s) for s in self.samples]}


def main(minutes: float, workers: list[int], seed: int | None, out: Path) -> int:
    """Run the chaos soak; write ``chaos.json`` and ``chaos.png`` into ``out``; 0 only if it passed."""
    seed = random.SystemRandom().randrange(1 << 30) if seed is None else seed
    soak = Soak(minutes, workers, seed, out)
    result = soak.run()
    (out / "chaos.json").write_text(json.dumps(result, indent=1))
    report.plot(soak.samples, result["faults"], result["phases"], result["exits"], result, out / "chaos.png")
    for line in report.lines(result):
        print(line)
    print(f"soak: wrote {out / 'chaos.png'} and {out / 'chaos.json'}; replay with --seed {seed}")
    return 0 if result["verdict"]["passed"] else 1


def _retrying(read: Callable[[], T], attempts: int = 6, pause_s: float = 10.0) -> T:
    """``read()``, again after a pause when it fails: a broker restarted by the last fault may
    still be electing leaders when the soak reads the topics for its verdict."""
    for _ in range(attempts - 1):
        try:
            return read()
        except (KafkaException, StreamTrainerError):
            log.warning("soak: reading the topics failed; retrying in %.0f s", pause_s, exc_info=True)
            time.sleep(pause_s)
    return read()
