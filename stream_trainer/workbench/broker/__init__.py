"""Real Apache Kafka 3.9.1 on 127.0.0.1, without Docker: one broker, a 3-broker cluster, SASL_SSL.

The jars come from Maven Central through Maven (``pom.xml`` beside this file) and are cached,
so only the first start downloads anything. Every node runs in KRaft combined mode (one process
is both broker and controller):

- ``LocalBroker``: one node, what tests, ``make demo`` and ``stream-trainer broker`` need;
- ``LocalCluster``: N nodes (3 for production-like tests) that can be killed, stopped and
  restarted one at a time (``local.py``);
- ``SaslSsl``: an extra ``SASL_SSL`` listener on either, with a CA and broker certificate made at
  start time by ``openssl`` and SCRAM-SHA-512/PLAIN users (``tls.py``, ``sasl.py``).

Kafka 3.9.x and not 4.x: tensorflow-io 0.37.1 bundles librdkafka 1.5.0, which asks for
ListOffsets v0, a request version Kafka 4.0 removed.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
from pathlib import Path

from stream_trainer.errors import BrokerStartError, MissingToolError

log = logging.getLogger(__name__)

KAFKA_VERSION = "3.9.1"
POM = Path(__file__).with_name("pom.xml")
JAVA_HINT = "install a Java 17+ runtime, e.g. 'apt-get install openjdk-17-jre-headless'"


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
    require_tool("java", JAVA_HINT)
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


# Imported last: these modules use the helpers above through this package.
from stream_trainer.workbench.broker.local import LocalBroker, LocalCluster  # noqa: E402
from stream_trainer.workbench.broker.sasl import SaslSsl  # noqa: E402
from stream_trainer.workbench.broker.tls import TlsFiles, make_ca, make_tls_files  # noqa: E402

__all__ = ["KAFKA_VERSION", "POM", "LocalBroker", "LocalCluster", "SaslSsl", "TlsFiles", "cache_dir",
           "free_port", "make_ca", "make_tls_files", "require_tool", "resolve_jars"]
