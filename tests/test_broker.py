"""The local broker's promises: it serves, and its failures say what to do."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from stream_trainer.errors import BrokerStartError, BrokerUnavailableError, MissingToolError
from stream_trainer.workbench import broker as broker_mod
from stream_trainer.workbench.broker import LocalBroker, free_port, resolve_jars


def test_missing_java_names_the_package_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    libs = resolve_jars()  # cached: starting must still check for java itself
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty PATH: neither java nor mvn
    with pytest.raises(MissingToolError, match=r"'java' is not on PATH.*openjdk"):
        LocalBroker(tmp_path / "kafka").start()
    assert libs.exists()


def test_missing_maven_is_reported_when_jars_must_be_resolved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    java = Path(broker_mod.require_tool("java", "")).parent
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "java").symlink_to(java / "java")
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(MissingToolError, match=r"'mvn' is not on PATH.*maven"):
        resolve_jars(tmp_path / "cache")


def test_maven_failure_shows_mavens_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "pom.xml"
    bad.write_text(broker_mod.POM.read_text().replace("<version>3.9.1</version>", "<version>0.0.0-nope</version>"))
    monkeypatch.setattr(broker_mod, "POM", bad)
    with pytest.raises(BrokerStartError, match="Maven could not resolve"):
        resolve_jars(tmp_path / "cache")
    assert not (tmp_path / "cache" / "libs" / ".complete").exists()


def test_resolved_jars_are_cached(tmp_path: Path) -> None:
    libs = resolve_jars()
    assert (libs / ".complete").exists()
    assert any(p.name.startswith("kafka_2.13-3.9.1") for p in libs.glob("*.jar"))
    t0 = time.monotonic()
    assert resolve_jars() == libs
    assert time.monotonic() - t0 < 1.0  # no Maven run the second time


def test_readiness_timeout_reports_the_log_tail_and_stops_the_process(tmp_path: Path) -> None:
    broker = LocalBroker(tmp_path / "kafka", ready_timeout_s=0.3)
    with pytest.raises(BrokerStartError, match=r"did not become ready within .* log tail"):
        broker.start()
    assert not broker.running


def test_broker_restarts_on_the_same_port_with_its_data(tmp_path: Path) -> None:
    from stream_trainer.config import KafkaConfig
    from stream_trainer.kafka import Cluster

    broker = LocalBroker(tmp_path / "kafka")
    try:
        bootstrap = broker.start()
        c = Cluster(KafkaConfig(bootstrap_servers=bootstrap))
        c.ensure_topics({"kept": 2})
        c.close()
        broker.stop()
        assert broker.start() == bootstrap
        c = Cluster(KafkaConfig(bootstrap_servers=bootstrap))
        assert c.partitions("kept") == [0, 1]
        c.close()
    finally:
        broker.stop()


def test_unreachable_broker_is_reported_with_its_address() -> None:
    from stream_trainer.config import KafkaConfig
    from stream_trainer.kafka import Cluster

    port = free_port()
    c = Cluster(KafkaConfig(bootstrap_servers=f"127.0.0.1:{port}", connect_timeout_s=1))
    t0 = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match=f"unreachable at 127.0.0.1:{port}"):
        c.wait_until_reachable()
    assert time.monotonic() - t0 < 10


@pytest.mark.skipif(bool(os.environ.get("KAFKA_BOOTSTRAP")), reason="uses the session's own local broker")
def test_session_broker_is_kafka_3_9_1(local_broker: LocalBroker) -> None:
    assert "3.9.1" in local_broker.log_path.read_text(errors="replace")
