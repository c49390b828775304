"""``trainer.source.reader``: the stack's default, a one-line error where tensorflow-io is chosen but
missing, and tensorflow-io's refusals of ``kafka.client`` settings applying only to tensorflow-io."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stream_trainer import config, tfenv
from stream_trainer.config import KafkaConfig, SourceConfig
from stream_trainer.errors import ConfigError
from stream_trainer.kafka import security
from tests.test_security import ROOT, SECRET, _env_without_tf_level

# Each refused by tensorflow-io's librdkafka 1.5.0, supported by confluent-kafka's 2.x.
TFIO_ONLY_REFUSALS = [
    {"security.protocol": "SASL_SSL", "sasl.mechanism": "GSSAPI", "sasl.kerberos.service.name": "kafka"},
    {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "t",
     "sasl.password": "with=equals"},
    {"security.protocol": "SSL", "ssl.endpoint.identification.algorithm": "https"},
]


def test_the_default_reader_is_tensorflow_io_where_it_is_installed_else_confluent_kafka(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert SourceConfig().chosen_reader() == ("tensorflow-io" if tfenv.tensorflow_io_installed() else "confluent-kafka")
    assert SourceConfig(reader="confluent-kafka").chosen_reader() == "confluent-kafka"
    monkeypatch.setattr(tfenv, "tensorflow_io_installed", lambda: False)  # the Python 3.13 stack
    assert SourceConfig().chosen_reader() == "confluent-kafka"


def test_tensorflow_io_chosen_where_it_is_not_installed_is_one_line_naming_the_key_and_why(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tfenv, "tensorflow_io_installed", lambda: False)
    with pytest.raises(ConfigError) as err:
        config.load(None, {"trainer.source.reader": "tensorflow-io"})
    assert str(err.value) == ("config key 'trainer.source.reader' is tensorflow-io, but tensorflow-io is not installed "
                              "(it has no build for this Python/TensorFlow); use confluent-kafka")
    assert config.load(None, {"trainer.source.reader": "confluent-kafka"}).trainer.source.reader == "confluent-kafka"


def test_an_unknown_reader_is_a_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"^config key 'trainer.source.reader' must be tensorflow-io or "
                                          r"confluent-kafka"):
        config.load(None, {"trainer.source.reader": "kafka-python"})


@pytest.mark.parametrize("client", TFIO_ONLY_REFUSALS)
def test_tensorflow_ios_refusals_do_not_apply_to_the_confluent_kafka_reader(client: dict[str, str]) -> None:
    kafka = KafkaConfig(bootstrap_servers="127.0.0.1:1", client=client)
    with pytest.raises(ConfigError, match=r"^config key 'kafka\.client\."):
        security.check(kafka, "tensorflow-io")
    security.check(kafka, "confluent-kafka")


@pytest.mark.parametrize(("client", "key"), [
    ({"enable.auto.commit": "true"}, "enable.auto.commit"),
    ({"group.id": "x"}, "group.id"),
    ({"security.protocol": "SASL_SSL", "sasl.mechanism": "NTLM"}, "sasl.mechanism"),
])
def test_the_confluent_kafka_reader_still_refuses_what_no_reader_may_be_given(client: dict[str, str],
                                                                               key: str) -> None:
    with pytest.raises(ConfigError, match=rf"^config key 'kafka.client.{key}' "):
        security.check(KafkaConfig(bootstrap_servers="127.0.0.1:1", client=client), "confluent-kafka")


def test_check_config_judges_kafka_client_by_the_chosen_reader(tmp_path: Path) -> None:
    client = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "t",
              "sasl.password": f"{SECRET}=", "ssl.endpoint.identification.algorithm": "https"}
    path = tmp_path / "trainer.yaml"
    path.write_text(yaml.safe_dump({"kafka": {"bootstrap_servers": "127.0.0.1:1", "client": client},
                                    "trainer": {"source": {"reader": "confluent-kafka"},
                                                "checkpoint": {"dir": str(tmp_path / "ckpt"),
                                                               "export_dir": str(tmp_path / "export")}}}))
    proc = subprocess.run([sys.executable, "-m", "stream_trainer.cli", "check-config", str(path)], cwd=ROOT,
                          env={**_env_without_tf_level(), "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "valid" in proc.stdout and SECRET not in proc.stdout + proc.stderr
