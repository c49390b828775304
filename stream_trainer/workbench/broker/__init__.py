"""A real Apache Kafka 3.9.1 broker on 127.0.0.1, without Docker.

The jars come from Maven Central through Maven (``pom.xml`` beside this file) and are cached,
so only the first start downloads anything. The broker runs in KRaft combined mode (one
process is both broker and controller), which is what tests, ``make demo`` and a developer's
``stream-trainer broker`` need.

Kafka 3.9.x and not 4.x: tensorflow-io 0.37.1 bundles librdkafka 1.5.0, which asks for
ListOffsets v0, a request version Kafka 4.0 removed.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from stream_trainer.errors import BrokerStartError, MissingToolError

log = logging.getLogger(__name__)

KAFKA_VERSION = "3.9.1"
POM = Path(__file__).with_name("pom.xml")


def cache_dir() -> Path:
    """Where resolved jars live; ``STREAM_TRAINER_CACHE`` overrides ``~/.cache/stream-trainer``."""
    root = os.environ.get("STREAM_TRAINER_CACHE") or Path.home() / ".cache" / "stream-trainer"
    return Path(root) / f"kafka-{KAFKA_VERSION}"


def require_tool(name: str, install_hint: str) -> str:
    """Return the path of ``name`` on PATH or raise a MissingToolError saying how to get it."""
    path = shutil.which(name)
    if path is None:
        msg = f"'{name}' is not on PATH; the local Kafka broker needs it ({install_hint})"
        raise MissingToolError(msg)
    return path


def resolve_jars(cache: Path | None = None) -> Path:
    """Resolve the broker's jars with Maven once and return the folder holding them.

    A marker file written after a complete copy makes later calls free and keeps a copy
    interrupted half-way from being mistaken for a good one.
    """
    libs = (cache or cache_dir()) / "libs"
    marker = libs / ".complete"
    if marker.exists():
        return libs
    require_tool("java", "install a Java 17+ runtime, e.g. 'apt-get install openjdk-17-jre-headless'")
    mvn = require_tool("mvn", "install Apache Maven, e.g. 'apt-get install maven'")
    partial = libs.with_name("libs.partial")
    shutil.rmtree(partial, ignore_errors=True)
    cmd = [
        mvn, "-q", "-B", "-f", str(POM), "dependency:copy-dependencies",
        f"-DoutputDirectory={partial}", "-DincludeScope=runtime",
    ]
    log.info("resolving Kafka %s jars with Maven into %s", KAFKA_VERSION, libs)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        msg = f"Maven could not resolve the Kafka {KAFKA_VERSION} jars (exit {proc.returncode}):\n{tail}"
        raise BrokerStartError(msg)
    shutil.rmtree(libs, ignore_errors=True)
    partial.rename(libs)
    marker.touch()
    return libs


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM the broker when the process that started it dies.

    A test run killed by a timeout never reaches its fixture teardown; without this its broker
    (in its own session, so Ctrl-C does not reach it mid-shutdown) would run on forever.
    """
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _cluster_id() -> str:
    # Kafka's Uuid text form: 16 random bytes, URL-safe base64, no padding.
    # It may start with "-", so callers pass it as --cluster-id=ID, never as a separate argument.
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


@dataclass
class LocalBroker:
    """One KRaft broker+controller process; ``start``/``stop`` may be called repeatedly.

    Ports and the data folder are fixed at construction so a restart comes back at the same
    address with the same log, which is what the broker-restart fault tests need.
    """

    workdir: Path
    port: int = 0
    controller_port: int = 0
    heap: str = "768m"
    ready_timeout_s: float = 90.0
    _proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.port = self.port or free_port()
        self.controller_port = self.controller_port or free_port()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "broker.log"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _write_config(self) -> Path:
        data = self.workdir / "data"
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(data),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            # A single local node: no reason to make a new consumer group wait 3 s.
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "false",
            "message.max.bytes": str(8 * 1024 * 1024),
            "replica.fetch.max.bytes": str(8 * 1024 * 1024),
            "log.segment.bytes": str(64 * 1024 * 1024),
        }
        path = self.workdir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        log4j = self.workdir / "log4j.properties"
        log4j.write_text(
            "log4j.rootLogger=INFO, stdout\n"
            "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
            "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
            "log4j.logger.kafka.request.logger=WARN\n"
            "log4j.logger.org.apache.kafka.storage.internals.log.LogLoader=WARN\n"
        )
        return path

    def _java(self, libs: Path, *args: str) -> list[str]:
        java = require_tool("java", "install a Java 17+ runtime, e.g. 'apt-get install openjdk-17-jre-headless'")
        return [
            java, f"-Xmx{self.heap}", "-Xms128m", "-XX:+UseG1GC",
            f"-Dlog4j.configuration=file:{self.workdir / 'log4j.properties'}",
            "-cp", f"{libs}/*", *args,
        ]

    def start(self) -> str:
        """Start the broker (formatting its storage the first time) and wait until it serves."""
        if self.running:
            return self.bootstrap
        libs = resolve_jars()
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self._write_config()
        if not (self.workdir / "data" / "meta.properties").exists():
            fmt = subprocess.run(
                self._java(libs, "kafka.tools.StorageTool", "format", f"--cluster-id={_cluster_id()}", "-c", str(config)),
                capture_output=True, text=True, check=False,
            )
            if fmt.returncode != 0:
                msg = f"formatting Kafka storage failed: {(fmt.stdout + fmt.stderr).strip()[-2000:]}"
                raise BrokerStartError(msg)
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(
                self._java(libs, "kafka.Kafka", str(config)),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=_die_with_parent,
            )
        try:
            self.wait_ready(self.ready_timeout_s)
        except BrokerStartError:
            self.stop(kill=True)
            raise
        log.info("Kafka %s ready at %s (log: %s)", KAFKA_VERSION, self.bootstrap, self.log_path)
        return self.bootstrap

    def wait_ready(self, timeout_s: float) -> None:
        """Block until a metadata request succeeds; raise with the log's tail otherwise."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                msg = f"Kafka exited with code {self._proc.returncode} while starting; log tail:\n{self.log_tail()}"
                raise BrokerStartError(msg)
            try:
                md = admin.list_topics(timeout=1.0)
                if md.brokers:
                    return
            except Exception:  # noqa: BLE001 - any failure here just means "not ready yet"
                pass
            time.sleep(0.2)
        msg = f"Kafka at {self.bootstrap} did not become ready within {timeout_s:.0f} s; log tail:\n{self.log_tail()}"
        raise BrokerStartError(msg)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no broker log)"

    def stop(self, kill: bool = False, timeout_s: float = 30.0) -> None:
        """Stop the broker: SIGTERM for a controlled shutdown (SIGKILL if ``kill``)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
