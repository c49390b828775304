"""Start-time checks on ``kafka.client`` and secret redaction (``stream_trainer/kafka/security.py``).

Pure checks run without a broker; the last test reads a real topic with tensorflow-io in a child
process to prove that its C++ INFO log (which prints every Kafka setting, passwords included) is off.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stream_trainer.config import KafkaConfig
from stream_trainer.errors import ConfigError
from stream_trainer.kafka import client_config, properties, security, tfio_librdkafka, values_1_5
from tests.stacks import needs_tfio

ROOT = Path(__file__).resolve().parents[1]
SECRET = "Sup3r-s3cret-pw"


def kafka(**client: str) -> KafkaConfig:
    return KafkaConfig(bootstrap_servers="127.0.0.1:9093", client=dict(client))


def sasl_ssl(**extra: str) -> KafkaConfig:
    base = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "trainer",
            "sasl.password": SECRET, "ssl.ca.location": "/etc/ca.pem"}
    return kafka(**{**base, **extra})


def refusal(config: KafkaConfig) -> str:
    with pytest.raises(ConfigError) as info:
        security.tfio_properties(config)
    message = str(info.value)
    assert "\n" not in message
    assert SECRET not in message
    return message


# --- which properties reach tensorflow-io --------------------------------------------------------

def test_every_librdkafka_1_5_consumer_property_reaches_tfio() -> None:
    special = {"security.protocol": "ssl", "sasl.mechanism": "PLAIN", "sasl.mechanisms": "PLAIN",
               "ssl.endpoint.identification.algorithm": "none"}
    for key in sorted(properties.TFIO_PASSED):
        value = special.get(key, "v")
        assert f"{key}={value}" in security.tfio_properties(kafka(**{key: value})), key


def test_sasl_ssl_settings_reach_tfio_with_its_fixed_consumer_settings() -> None:
    got = security.tfio_properties(sasl_ssl())
    assert got[:3] == ["enable.auto.commit=false", "enable.auto.offset.store=false", "api.version.request=true"]
    assert set(got[3:]) == {"security.protocol=SASL_SSL", "sasl.mechanism=SCRAM-SHA-512", "sasl.username=trainer",
                            f"sasl.password={SECRET}", "ssl.ca.location=/etc/ca.pem"}


def test_property_tables_do_not_overlap() -> None:
    tables = [properties.TFIO_PASSED, properties.PRODUCER_ONLY, properties.CALLBACKS, set(properties.OWNED),
              properties.KERBEROS, properties.NEWER_GROUP_ONLY, properties.NEWER_TUNING,
              set(properties.NEWER_DEFAULT_ONLY), set(properties.NEWER_UNSUPPORTED)]
    seen: set[str] = set()
    for table in tables:
        assert not seen & set(table), seen & set(table)
        seen |= set(table)


@pytest.mark.parametrize("key", ["linger.ms", "acks", "enable.idempotence", "compression.type", "transactional.id",
                                 "sticky.partitioning.linger.ms", "group.protocol", "max.poll.records",
                                 "enable.metrics.push", "socket.connection.setup.timeout.ms",
                                 "metadata.recovery.strategy", "retry.backoff.max.ms"])
def test_producer_group_and_newer_tuning_properties_skip_tfio_but_reach_confluent(key: str) -> None:
    config = kafka(**{key: "5"})
    assert not [p for p in security.tfio_properties(config) if p.startswith(f"{key}=")]
    assert client_config(config)[key] == "5"


@pytest.mark.parametrize(("key", "value"), [("client.dns.lookup", "use_all_dns_ips"),
                                            ("sasl.oauthbearer.method", "default")])
def test_newer_properties_at_the_value_librdkafka_1_5_always_uses_are_skipped(key: str, value: str) -> None:
    assert security.tfio_properties(kafka(**{key: value})) == list(security.TFIO_FIXED)


@pytest.mark.parametrize(("key", "value", "hint"), [
    ("sasl.oauthbearer.method", "oidc", "except with its default value 'default'"),
    ("client.dns.lookup", "resolve_canonical_bootstrap_servers_only", "except with its default value"),
    ("sasl.oauthbearer.token.endpoint.url", "https://idp/token", "OIDC token endpoint"),
    ("ssl.ca.pem", "-----BEGIN CERTIFICATE-----", "ssl.ca.location"),
    ("ssl.providers", "default", "reads the training data"),
    ("ssl.engine.id", "dynamic", "reads the training data"),
])
def test_newer_properties_tfio_cannot_honour_are_refused_naming_the_key(key: str, value: str, hint: str) -> None:
    message = refusal(kafka(**{key: value}))
    assert message.startswith(f"config key 'kafka.client.{key}' is not supported by the librdkafka 1.5.0 "
                              f"inside tensorflow-io"), message
    assert hint in message


def test_a_property_no_librdkafka_knows_is_refused_as_a_typo() -> None:
    assert "is not a librdkafka property (a typo?)" in refusal(kafka(**{"ssl.ca.locaton": "/etc/ca.pem"}))


@pytest.mark.parametrize(("key", "instead"), [("bootstrap.servers", "kafka.bootstrap_servers"),
                                              ("group.id", "trainer.source.group_id"),
                                              ("enable.auto.commit", "the trainer commits")])
def test_properties_stream_trainer_sets_itself_are_refused(key: str, instead: str) -> None:
    message = refusal(kafka(**{key: "x"}))
    assert f"'kafka.client.{key}' is set by stream-trainer itself" in message
    assert instead in message


def test_callbacks_are_refused() -> None:
    assert "is a callback" in refusal(kafka(error_cb="print"))


# --- settings tensorflow-io would hang or fail on ----------------------------------------------

@pytest.mark.parametrize("key", ["sasl.mechanism", "sasl.mechanisms"])
def test_gssapi_is_refused_because_tfio_has_no_kerberos(key: str) -> None:
    config = sasl_ssl(**{key: "gssapi"})
    if key == "sasl.mechanisms":
        config = kafka(**{k: v for k, v in config.client.items() if k != "sasl.mechanism"})
    message = refusal(config)
    assert message.startswith(f"config key 'kafka.client.{key}' is GSSAPI"), message
    assert "built without GSSAPI/Kerberos" in message


def test_kerberos_settings_are_refused() -> None:
    assert "built without GSSAPI/Kerberos" in refusal(sasl_ssl(**{"sasl.kerberos.service.name": "kafka"}))


def test_sasl_without_a_mechanism_is_refused_because_the_default_is_gssapi() -> None:
    config = kafka(**{"security.protocol": "SASL_SSL", "sasl.username": "u", "sasl.password": SECRET})
    message = refusal(config)
    assert message.startswith("config key 'kafka.client.sasl.mechanism' must be set with security.protocol=SASL_SSL")
    assert "GSSAPI" in message


def test_oauthbearer_without_unsecured_tokens_is_refused() -> None:
    assert "no OIDC token endpoint support" in refusal(sasl_ssl(**{"sasl.mechanism": "OAUTHBEARER"}))


@pytest.mark.parametrize("password", ["abc=def", "=start", "end=", "base64pad=="])
def test_password_with_an_equals_sign_is_refused_without_showing_it(password: str) -> None:
    with pytest.raises(ConfigError) as info:
        security.tfio_properties(sasl_ssl(**{"sasl.password": password}))
    message = str(info.value)
    assert message.startswith("config key 'kafka.client.sasl.password' contains '='"), message
    assert "a password without '='" in message
    assert password not in message


def test_equals_sign_in_a_plain_value_is_refused_too() -> None:
    message = refusal(kafka(**{"client.id": "team=vision"}))
    assert "'kafka.client.client.id' contains '='" in message and "a value without '='" in message


def test_hostname_verification_is_refused_and_the_message_says_what_protects_instead() -> None:
    message = refusal(sasl_ssl(**{"ssl.endpoint.identification.algorithm": "HTTPS"}))
    assert message.startswith("config key 'kafka.client.ssl.endpoint.identification.algorithm' is https")
    assert "hangs" in message and "confluent-kafka clients verify the hostname" in message
    assert "preflight" in message


def test_switching_hostname_verification_off_is_allowed_with_a_warning(
        caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("a CA")
    with caplog.at_level(logging.WARNING, logger="stream_trainer.kafka.security"):
        security.check(sasl_ssl(**{"ssl.endpoint.identification.algorithm": "none", "ssl.ca.location": str(ca)}))
    assert "no client verifies that the broker's certificate names the broker" in caplog.text


def test_a_missing_ca_file_is_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'kafka.client.ssl.ca.location' names .*nowhere.pem, which does not"):
        security.check(sasl_ssl(**{"ssl.ca.location": str(tmp_path / "nowhere.pem")}))


def test_unknown_security_protocol_is_refused() -> None:
    assert "must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL" in refusal(kafka(**{"security.protocol": "tls"}))


# --- secrets out of logs ---------------------------------------------------------------------

@pytest.mark.parametrize("line", [
    f"Kafka global configuration: sasl.password={SECRET}",
    f"conf {{'sasl.password': '{SECRET}', 'sasl.username': 'u'}}",
    f'{{"ssl.keystore.password": "{SECRET}"}}',
    f"ssl.key.password: {SECRET}",
    f'org.apache.kafka.common.security.plain.PlainLoginModule required username="u" password="{SECRET}";',
    f"sasl.oauthbearer.client.secret={SECRET} next",
])
def test_redact_removes_values_of_secret_keys(line: str) -> None:
    clean = security.redact(line)
    assert SECRET not in clean
    assert "***" in clean


def test_redact_removes_known_secret_values_wherever_they_appear() -> None:
    assert security.redact(f"auth failed for {SECRET}!", [SECRET]) == "auth failed for ***!"
    spaced = "pass word with spaces"
    assert spaced not in security.redact(f"'sasl.password': '{spaced}'", [spaced])


def test_redact_keeps_ordinary_text() -> None:
    text = "tensorflow-io logs every Kafka setting, passwords included, at INFO (sasl.username=trainer)"
    assert security.redact(text) == text


@pytest.fixture()
def root_output() -> Iterator[io.StringIO]:
    """The root logger writing into a buffer, restored afterwards (filters included)."""
    root = logging.getLogger()
    saved = (root.level, list(root.handlers), list(root.filters))
    buffer = io.StringIO()
    root.handlers = [logging.StreamHandler(buffer)]
    root.setLevel(logging.INFO)
    try:
        yield buffer
    finally:
        root.setLevel(saved[0])
        root.handlers = saved[1]
        root.filters = saved[2]


def test_installed_redaction_covers_child_loggers_arguments_and_tracebacks(root_output: io.StringIO) -> None:
    security.install_redaction(sasl_ssl())
    child = logging.getLogger("stream_trainer.some.module")
    child.info("client settings: sasl.password=%s", SECRET)
    logging.getLogger("stream_trainer.kafka.cluster").error("echoed %s back", SECRET)
    try:
        raise ValueError(f"bad {SECRET}")
    except ValueError:
        child.exception("failed")
    text = root_output.getvalue()
    assert "failed" in text and "ValueError" in text and "echoed *** back" in text
    assert SECRET not in text


def _python(code: str, env: dict[str, str], timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    import os

    child = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    child.update(env)
    child["PYTHONPATH"] = str(ROOT)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=child, capture_output=True,
                          text=True, timeout=timeout_s, check=False)


@pytest.mark.parametrize(("before", "after"), [("", "1"), ("0", "1"), ("2", "2"), ("3", "3")])
def test_tensorflow_info_log_is_switched_off_before_tensorflow_loads(before: str, after: str) -> None:
    proc = _python("""
        import os
        from stream_trainer.kafka import security
        security.quiet_tensorflow_info_log()
        print(os.environ["TF_CPP_MIN_LOG_LEVEL"])
    """, {"TF_CPP_MIN_LOG_LEVEL": before} if before else {})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == after


def test_switching_the_info_log_off_after_tensorflow_loaded_is_a_loud_error() -> None:
    proc = _python("""
        import sys
        sys.modules["tensorflow"] = object()  # stands in for a real import: the check only asks sys.modules
        from stream_trainer.kafka import security
        security.quiet_tensorflow_info_log()
    """, {})
    assert proc.returncode != 0 and "RuntimeError" in proc.stderr and "earlier" in proc.stderr


TFIO_READ = """
    import os, sys
    from stream_trainer.config import KafkaConfig
    from stream_trainer.kafka import security
    client = {"sasl.username": "trainer", "sasl.password": sys.argv[3]}
    kafka = KafkaConfig(bootstrap_servers=sys.argv[1], client=client)
    if os.environ.get("GUARD") == "1":
        security.guard_secrets(kafka)
    import tensorflow_io.kafka as tfio_kafka
    ds = tfio_kafka.KafkaDataset([sys.argv[2] + ":0:0:-1"], servers=sys.argv[1], group="g", eof=True,
                                 timeout=1000, config_global=security.tfio_properties(kafka))
    print("read", len(list(ds)), flush=True)
"""


@needs_tfio
def test_tfio_does_not_print_the_password_once_secrets_are_guarded(
        kafka_bootstrap: str, new_topic: Callable[..., str], tmp_path: Path) -> None:
    """The same read with and without the guard: the unguarded one shows that the leak is real."""
    topic = new_topic(1)
    script = tmp_path / "read.py"
    script.write_text(textwrap.dedent(TFIO_READ))
    runs = {}
    for guard in ("1", "0"):
        proc = subprocess.run([sys.executable, str(script), kafka_bootstrap, topic, SECRET], cwd=ROOT,
                              env={**_env_without_tf_level(), "GUARD": guard, "PYTHONPATH": str(ROOT)},
                              capture_output=True, text=True, timeout=180, check=False)
        assert proc.returncode == 0 and "read 0" in proc.stdout, proc.stderr[-2000:]
        runs[guard] = proc.stdout + proc.stderr
    assert f"sasl.password={SECRET}" in runs["0"], "tfio no longer logs its settings: this test proves nothing"
    assert SECRET not in runs["1"], runs["1"][-2000:]


def _env_without_tf_level() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}


# --- values: asked of the librdkafka 1.5.0 inside tensorflow-io ---------------------------------

BAD_VALUES = [
    # (key, value, librdkafka 1.5.0's own reason), one per kind of rule: a debug context 1.5.0 does
    # not have, an enum value it does not have, a number that is not one, a number out of range.
    ("debug", "security,conf,broker", 'Invalid value "conf" for configuration property "debug"'),
    ("isolation.level", "read_commited", 'Invalid value "read_commited" for configuration property "isolation.level"'),
    ("fetch.max.bytes", "lots", 'Invalid value for configuration property "fetch.max.bytes"'),
    ("queued.min.messages", "0", 'Configuration property "queued.min.messages" value 0 is outside allowed range'),
]


def value_refusal(config: KafkaConfig) -> str:
    with pytest.raises(ConfigError) as info:
        security.check_values(config)
    message = str(info.value)
    assert "\n" not in message
    assert SECRET not in message
    return message


@pytest.mark.parametrize(("key", "value", "reason"), BAD_VALUES)
def test_a_value_tfios_librdkafka_refuses_is_refused_naming_the_key_and_its_reason(
        key: str, value: str, reason: str) -> None:
    message = value_refusal(sasl_ssl(**{key: value}))
    assert message.startswith(f"config key 'kafka.client.{key}' has a value that tensorflow-io's librdkafka "
                              f"1.5.0 refuses: "), message
    assert reason in message, message


def test_values_tfios_librdkafka_takes_pass() -> None:
    security.check_values(sasl_ssl(**{"debug": "security,broker,protocol", "isolation.level": "read_committed",
                                      "fetch.max.bytes": "52428800", "queued.min.messages": "1000",
                                      "socket.keepalive.enable": "true", "client.id": "trainer-0"}))


@needs_tfio
def test_the_library_is_really_asked() -> None:
    """The check above must come from tensorflow-io's librdkafka, not from the fallback table."""
    asked = tfio_librdkafka.refusals({"debug": "conf", "client.id": "x"})
    assert asked is not None, "tensorflow-io's librdkafka could not be asked"
    version, refused = asked
    assert version == "1.5.0"
    assert refused == {"debug": 'Invalid value "conf" for configuration property "debug"'}


@pytest.mark.parametrize(("key", "value", "reason"), BAD_VALUES)
def test_without_the_library_the_1_5_value_rules_refuse_the_same_values(
        key: str, value: str, reason: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tfio_librdkafka, "refusals", lambda settings: None)
    message = value_refusal(sasl_ssl(**{key: value}))
    assert message.startswith(f"config key 'kafka.client.{key}' has a value that tensorflow-io's librdkafka "
                              f"1.5.0 refuses: "), message
    security.check_values(sasl_ssl(**{"debug": "security,broker", "isolation.level": "read_committed"}))


@needs_tfio
def test_the_1_5_value_rules_agree_with_the_library_on_every_rule() -> None:
    """The fallback table is generated from the library; this keeps it from drifting from it."""
    keys = [*values_1_5.INTEGER, *values_1_5.BOOLEAN, *values_1_5.ENUM, *values_1_5.FLAGS, *values_1_5.REFUSED]
    cases = [(key, value) for key in keys for value in values_1_5.examples(key)]
    assert len(cases) > 500
    disagree = []
    for round_ in range(max(len(values_1_5.examples(k)) for k in keys)):  # one child per round: keys are unique
        batch = {k: values_1_5.examples(k)[round_] for k in keys if round_ < len(values_1_5.examples(k))}
        asked = tfio_librdkafka.refusals(batch)
        assert asked is not None, "tensorflow-io's librdkafka could not be asked"
        for key, value in batch.items():
            library = " ".join(asked[1][key].split()) if key in asked[1] else None
            if library != values_1_5.problem(key, value):
                disagree.append((key, value, library, values_1_5.problem(key, value)))
    assert not disagree, disagree


# --- check-config: every check run makes before it connects ---------------------------------

def check_config(tmp_path: Path, client: dict[str, str]) -> subprocess.CompletedProcess[str]:
    import yaml

    path = tmp_path / "trainer.yaml"
    path.write_text(yaml.safe_dump({"kafka": {"bootstrap_servers": "127.0.0.1:1", "client": client}}))
    return subprocess.run([sys.executable, "-m", "stream_trainer.cli", "check-config", str(path)], cwd=ROOT,
                          env={**_env_without_tf_level(), "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=120, check=False)


SCRAM = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "trainer",
         "sasl.password": SECRET}


@pytest.mark.parametrize(("client", "key"), [
    ({**SCRAM, "sasl.mechanism": "GSSAPI"}, "sasl.mechanism"),
    ({**SCRAM, "sasl.password": "with=equals"}, "sasl.password"),
    ({**SCRAM, "ssl.endpoint.identification.algorithm": "https"}, "ssl.endpoint.identification.algorithm"),
    ({**SCRAM, "debug": "security,conf,broker"}, "debug"),
    ({**SCRAM, "isolation.level": "read_commited"}, "isolation.level"),
    ({**SCRAM, "fetch.max.bytes": "lots"}, "fetch.max.bytes"),
])
def test_check_config_refuses_what_run_refuses_before_connecting(
        tmp_path: Path, client: dict[str, str], key: str) -> None:
    proc = check_config(tmp_path, client)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and not proc.stdout, proc.stdout + proc.stderr
    assert lines[0].startswith(f"stream-trainer: error: config key 'kafka.client.{key}' "), lines[0]
    assert SECRET not in proc.stderr and "with=equals" not in proc.stderr


def test_check_config_passes_settings_run_takes(tmp_path: Path) -> None:
    proc = check_config(tmp_path, {**SCRAM, "debug": "security,broker", "isolation.level": "read_committed"})
    assert proc.returncode == 0, proc.stderr
    assert ": valid (" in proc.stdout


def test_a_number_with_a_unit_is_refused_though_librdkafka_would_read_its_digits() -> None:
    message = value_refusal(sasl_ssl(**{"fetch.max.bytes": "50MB"}))
    assert message.startswith("config key 'kafka.client.fetch.max.bytes' must be a whole number "
                              "(librdkafka would read '50MB' as 50)"), message
