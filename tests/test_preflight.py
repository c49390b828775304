"""``preflight.check`` against the session's plaintext broker: success, cost, and the failures a
plaintext listener can show. The SASL_SSL failures are in ``tests/faults/test_secured_cluster.py``."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from stream_trainer.config import KafkaConfig
from stream_trainer.errors import AuthenticationError, BrokerUnavailableError, ConfigError
from stream_trainer.kafka import preflight
from stream_trainer.kafka.cluster import _ReconnectChatter
from stream_trainer.workbench.broker import free_port

ROOT = Path(__file__).resolve().parents[1]


def test_check_passes_against_a_reachable_plaintext_broker(kafka_config: KafkaConfig,
                                                           new_topic: Callable[..., str]) -> None:
    preflight.check(kafka_config, new_topic(1))
    preflight.check(kafka_config, "no-such-topic-is-left-to-the-caller")
    preflight.check(kafka_config, None)


def test_group_check_survives_groups_that_never_committed(kafka_bootstrap: str, new_topic: Callable[..., str]) -> None:
    """In a child process: the admin call this check once used crashed the whole process (SIGSEGV)."""
    topic = new_topic(1)
    code = ("import sys; from stream_trainer.config import KafkaConfig; from stream_trainer.kafka import preflight; "
            "k = KafkaConfig(bootstrap_servers=sys.argv[1], connect_timeout_s=10); "
            "[preflight.check(k, sys.argv[2], group=g) for g in ('never-1', 'never-2')]; print('checked')")
    proc = subprocess.run([sys.executable, "-c", code, kafka_bootstrap, topic], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0 and "checked" in proc.stdout, f"exit {proc.returncode}: {proc.stderr[-2000:]}"


def test_check_is_cheap_enough_to_repeat(kafka_config: KafkaConfig) -> None:
    runs = 10
    wall, cpu = time.monotonic(), time.process_time()
    for _ in range(runs):
        preflight.check(kafka_config)
    wall, cpu = (time.monotonic() - wall) / runs, (time.process_time() - cpu) / runs
    print(f"preflight.check, plaintext, fresh client each time: {wall * 1000:.0f} ms wall, {cpu * 1000:.0f} ms CPU")
    assert wall < 1.0


def test_unreachable_broker_is_reported_after_the_connect_timeout() -> None:
    nobody = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(BrokerUnavailableError) as info:
        preflight.check(KafkaConfig(bootstrap_servers=nobody, connect_timeout_s=2))
    took = time.monotonic() - t0
    assert not isinstance(info.value, AuthenticationError)
    assert str(info.value).startswith(f"Kafka broker unreachable at {nobody} after 2 s (")
    assert "Connection refused" in str(info.value) and "kafka.bootstrap_servers" in str(info.value)
    assert 2 <= took < 6, took


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
def test_tls_client_against_a_plaintext_listener_is_named_as_such(kafka_bootstrap: str, protocol: str) -> None:
    client = {"security.protocol": protocol}
    if protocol == "SASL_SSL":
        client |= {"sasl.mechanism": "PLAIN", "sasl.username": "u", "sasl.password": "pw-never-shown"}
    kafka = KafkaConfig(bootstrap_servers=kafka_bootstrap, client=client, connect_timeout_s=10)
    t0 = time.monotonic()
    with pytest.raises(AuthenticationError) as info:
        preflight.check(kafka)
    message = str(info.value)
    assert f"the listener at {kafka_bootstrap.split(',')[0]} does not speak TLS" in message
    assert f"security.protocol is {protocol}" in message and "pw-never-shown" not in message
    assert time.monotonic() - t0 < 5, "found by librdkafka's first handshake error, not at the timeout"


def test_settings_librdkafka_refuses_are_a_config_error_without_secrets(tmp_path: Path) -> None:
    not_a_certificate = tmp_path / "ca.pem"
    not_a_certificate.write_text("not a certificate")
    client = {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.username": "u",
              "sasl.password": "pw-never-shown", "ssl.ca.location": str(not_a_certificate)}
    with pytest.raises(ConfigError) as info:
        preflight.check(KafkaConfig(bootstrap_servers="127.0.0.1:1", client=client, connect_timeout_s=2))
    message = str(info.value)
    assert message.startswith("librdkafka refused the kafka.client settings: ") and "ssl.ca.location" in message
    assert "pw-never-shown" not in message


def _record(text: str) -> logging.LogRecord:
    return logging.LogRecord("librdkafka", logging.ERROR, __file__, 0, "%s", (text,), None)


def test_a_security_line_from_long_lived_clients_is_shown_once_not_at_every_reconnect() -> None:
    """librdkafka repeats "SSL handshake failed" at each reconnect, from each client, with a new timing."""
    chatter = _ReconnectChatter()
    line = ("FAIL [rdkafka#consumer-{n}] sasl_ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: "
            "error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified, "
            "verify that ssl.ca.location is correctly configured or root CA certificates are installed "
            "(after {ms}ms in state SSL_HANDSHAKE{more})")
    shown = [chatter.filter(_record(line.format(n=n, ms=n * 3, more=", 1 identical error(s) suppressed" if n else "")))
             for n in range(10)]
    assert shown == [True] + [False] * 9
    other = "FAIL [rdkafka#producer-2] sasl_ssl://127.0.0.1:9093/bootstrap: SASL authentication error: bad password"
    assert chatter.filter(_record(other)), "a different problem is shown"
    assert not chatter.filter(_record("Connect to ipv4#127.0.0.1:9093 failed: Connection refused")), "chatter"
    assert chatter.filter(_record("Metadata for topic t: Unknown topic or partition")), "everything else is shown"


def test_a_security_line_is_shown_again_after_the_repeat_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    chatter = _ReconnectChatter()
    now = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    text = "FAIL [rdkafka#consumer-1] ssl://b:9093/1: SSL handshake failed (after 1ms in state SSL_HANDSHAKE)"
    assert chatter.filter(_record(text))
    now[0] += chatter.REPEAT_S - 1
    assert not chatter.filter(_record(text))
    now[0] += 2
    assert chatter.filter(_record(text))


def test_remembered_security_lines_are_bounded() -> None:
    chatter = _ReconnectChatter()
    for n in range(1000):
        chatter.filter(_record(f"SSL handshake failed at broker {n}"))
    assert len(chatter._shown) == chatter._REMEMBERED
