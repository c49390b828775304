"""One Kafka JVM: its properties file, its storage format and its process.

A node knows nothing about its peers; ``local.py`` writes the properties that make several nodes
one cluster. Ports and the data folder are fixed at construction so that a restart comes back at
the same address with the same log, which is what the restart and failover tests need.
"""

from __future__ import annotations

import base64
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from stream_trainer.errors import BrokerStartError
from stream_trainer.workbench import broker as package

LOG4J = (
    "log4j.rootLogger=INFO, stdout\n"
    "log4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
    "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
    "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
    "log4j.logger.kafka.request.logger=WARN\n"
    "log4j.logger.org.apache.kafka.storage.internals.log.LogLoader=WARN\n"
)


def die_with_parent() -> None:
    """Ask Linux to SIGTERM this child when the process that started it dies.

    A test run killed by a timeout never reaches its fixture teardown; without this its broker
    (in its own session, so Ctrl-C does not reach it mid-shutdown) would run on forever.
    Linux sends it when the *thread* that started the child ends, not the process: start a node
    from a thread that outlives it (the chaos soak restarts its broker on its main thread).
    """
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def new_cluster_id() -> str:
    """Kafka's Uuid text form: 16 random bytes, URL-safe base64, no padding.

    It may start with "-", so callers pass it as ``--cluster-id=ID``, never as a separate argument.
    """
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


class KafkaNode:
    """One KRaft broker+controller process; ``launch``/``stop`` may be called repeatedly."""

    def __init__(self, workdir: Path, node_id: int, heap: str) -> None:
        self.workdir = Path(workdir)
        self.node_id = node_id
        self.heap = heap
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / "broker.log"

    @property
    def config_path(self) -> Path:
        return self.workdir / "server.properties"

    @property
    def formatted(self) -> bool:
        return (self.workdir / "data" / "meta.properties").exists()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def exit_code(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def write_config(self, props: dict[str, str]) -> None:
        """Write ``server.properties`` (with ``log.dirs`` under the node's folder) and log4j settings."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        props = {**props, "node.id": str(self.node_id), "log.dirs": str(self.workdir / "data")}
        self.config_path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.workdir / "log4j.properties").write_text(LOG4J)

    def _java(self, libs: Path, *args: str) -> list[str]:
        java = package.require_tool("java", package.JAVA_HINT)
        return [
            java, f"-Xmx{self.heap}", "-Xms64m", "-XX:+UseG1GC",
            f"-Dlog4j.configuration=file:{self.workdir / 'log4j.properties'}",
            "-cp", f"{libs}/*", *args,
        ]

    def format(self, libs: Path, cluster_id: str, extra_args: list[str]) -> None:
        """Format the storage once (a restart keeps the data); ``extra_args`` e.g. ``--add-scram``."""
        if self.formatted:
            return
        fmt = subprocess.run(
            self._java(libs, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
                       "-c", str(self.config_path), *extra_args),
            capture_output=True, text=True, check=False,
        )
        if fmt.returncode != 0:
            msg = f"formatting Kafka storage of node {self.node_id} failed: {(fmt.stdout + fmt.stderr).strip()[-2000:]}"
            raise BrokerStartError(msg)

    def launch(self, libs: Path) -> None:
        """Start the JVM and return at once; the caller waits for readiness."""
        if self.running:
            return
        with open(self.log_path, "ab") as out:
            self._proc = subprocess.Popen(
                self._java(libs, "kafka.Kafka", str(self.config_path)),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, preexec_fn=die_with_parent,
            )

    def pause(self) -> None:
        """SIGSTOP: the JVM freezes with its sockets open (a GC pause or a hung host, to its clients)."""
        if self.running:
            assert self._proc is not None
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after ``pause``."""
        if self.running:
            assert self._proc is not None
            self._proc.send_signal(signal.SIGCONT)

    def send_stop(self, kill: bool = False) -> None:
        """Send SIGTERM (a controlled shutdown) or SIGKILL without waiting; ``wait_stopped`` waits."""
        if self.running:
            assert self._proc is not None
            self._proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)

    def wait_stopped(self, timeout_s: float = 30.0) -> None:
        """Wait for the process to exit; SIGKILL it after ``timeout_s``."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self, kill: bool = False, timeout_s: float = 30.0) -> None:
        """SIGTERM for a controlled shutdown (SIGKILL if ``kill``); SIGKILL after ``timeout_s``."""
        self.send_stop(kill)
        self.wait_stopped(timeout_s)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no broker log)"
