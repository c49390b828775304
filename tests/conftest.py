"""Shared fixtures: one real Kafka 3.9.1 broker per test session, fresh topic names per test.

``KAFKA_BOOTSTRAP=host:port`` points the whole suite at an existing cluster instead.
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stream_trainer import tfenv
from stream_trainer.config import KafkaConfig
from stream_trainer.kafka import Cluster
from stream_trainer.workbench.broker import LocalBroker


def pytest_addoption(parser: pytest.Parser) -> None:
    # Declared here because pytest reads pytest_addoption only from the root conftest; the
    # fault suite (tests/faults/conftest.py) decides what it means.
    parser.addoption("--run-faults", action="store_true", default=False,
                     help="also run the slow fault-injection scenarios (make test-faults)")


@pytest.fixture(autouse=True)
def _keras_policy_restored() -> Iterator[None]:
    """Every test starts in float32: a trainer run in-process sets Keras's process-wide dtype policy
    (learn/precision.py), and a later test's model would silently be built in mixed precision."""
    yield
    keras = sys.modules.get("keras")
    if keras is not None:
        keras.config.set_dtype_policy("float32")


@pytest.fixture(scope="session")
def local_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker | None]:
    """The session's broker process, or None when KAFKA_BOOTSTRAP names an existing cluster."""
    if os.environ.get("KAFKA_BOOTSTRAP"):
        yield None
        return
    broker = LocalBroker(tmp_path_factory.mktemp("kafka"))
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_bootstrap(local_broker: LocalBroker | None) -> str:
    return os.environ.get("KAFKA_BOOTSTRAP") or local_broker.bootstrap  # type: ignore[union-attr]


@pytest.fixture(scope="session")
def kafka_config(kafka_bootstrap: str) -> KafkaConfig:
    return KafkaConfig(bootstrap_servers=kafka_bootstrap, connect_timeout_s=10)


@pytest.fixture()
def cluster(kafka_config: KafkaConfig) -> Iterator[Cluster]:
    c = Cluster(kafka_config, group_id=f"test-{uuid.uuid4().hex[:8]}")
    try:
        yield c
    finally:
        c.close()


@pytest.fixture()
def new_topic(cluster: Cluster) -> Callable[..., str]:
    """Create a uniquely named topic so tests never see each other's messages."""

    def make(partitions: int = 1, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        cluster.ensure_topics({name: partitions})
        return name

    return make


@pytest.fixture()
def reader() -> str:
    """``trainer.source.reader`` for a test: the stack's default; tests of the reader contract
    parametrise it over both (``tests/readers.py``)."""
    return tfenv.default_reader()


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    return tmp_path


_exit_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _exit_status.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave without running interpreter teardown once pytest has reported.

    tensorflow-io's Kafka reader blocks in C++ (ignoring cancellation) until a message arrives;
    tests and in-process trainers leave such readers behind, and tearing down TensorFlow's
    thread pools at exit would wait for them forever. Everything pytest owns is already
    reported and cleaned up here, so skipping the rest is safe.
    """
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_exit_status[0] if _exit_status else 0)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Slow fault scenarios are skipped unless ``--run-faults`` is given."""
    if config.getoption("--run-faults", default=False):
        return
    skip = pytest.mark.skip(reason="slow fault scenario: run it with --run-faults (make test-faults)")
    for item in items:
        if "faults" in item.keywords and "slow" in item.keywords:
            item.add_marker(skip)
