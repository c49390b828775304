"""Start-time checks on ``kafka.client``, and keeping its secrets out of every log line.

``kafka.client`` (librdkafka properties) goes to two different librdkafkas: confluent-kafka's
modern one (admin, commits, lag, dead letters, producer) and the 1.5.0 inside tensorflow-io 0.37.1,
which reads the training data. tensorflow-io's does not fail on bad security settings, it hangs:
a wrong password, an untrusted CA, a plaintext client against a TLS port, GSSAPI, hostname
verification, all log and retry forever. So everything decidable from the settings alone is
decided here, before any client connects; ``preflight.check`` decides the rest against the
cluster with confluent-kafka.

Those refusals are tensorflow-io's: with ``trainer.source.reader: confluent-kafka`` every client
is confluent-kafka's librdkafka 2.x, which supports GSSAPI/Kerberos, OIDC, hostname
verification and '=' in values, so ``check(kafka, reader)`` then refuses only what no reader
may be given (the properties stream-trainer sets itself, callbacks, an unknown protocol or SASL
mechanism), and librdkafka itself judges the rest when the preflight creates its clients.

Call order at start (``cli._cmd_run``, right after ``config.load``, before TensorFlow loads):
``guard_secrets(kafka)``, ``check(kafka)``, ``preflight.check(kafka, topic)``. ``check`` is every
check that needs no broker, and ``stream-trainer check-config`` calls it too: one function, so
the two cannot disagree on a setting.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterable
from pathlib import Path

from stream_trainer.config import KafkaConfig
from stream_trainer.errors import ConfigError
from stream_trainer.kafka import properties as props
from stream_trainer.kafka import tfio_librdkafka, values_1_5

log = logging.getLogger(__name__)

TFIO = "the librdkafka 1.5.0 inside tensorflow-io 0.37.1"
# tfio's consumer joins no group and must never commit: our checkpoint owns positions.
TFIO_FIXED = ("enable.auto.commit=false", "enable.auto.offset.store=false", "api.version.request=true")
MECHANISMS = {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"}
# What librdkafka 2.x (confluent-kafka) supports besides: Kerberos.
CONFLUENT_MECHANISMS = MECHANISMS | {"GSSAPI"}
PROTOCOLS = {"plaintext", "ssl", "sasl_plaintext", "sasl_ssl"}
# A key whose value is a secret: sasl.password, ssl.key.password, ssl.keystore.password,
# sasl.oauthbearer.client.secret, ...private.key.passphrase and whatever else is named so.
SECRET_KEY = re.compile(r"password|secret|passphrase", re.IGNORECASE)
REDACTED = "***"


def is_secret(key: str) -> bool:
    return SECRET_KEY.search(key) is not None


def secret_values(kafka: KafkaConfig) -> list[str]:
    """The values of every secret key in ``kafka.client`` (never logged; used to redact)."""
    return [v for k, v in kafka.client.items() if is_secret(k) and v]


def _refuse(key: str, why: str) -> ConfigError:
    return ConfigError(f"config key 'kafka.client.{key}' {why}")


def tfio_properties(kafka: KafkaConfig) -> list[str]:
    """The ``key=value`` list for tensorflow-io's ``KafkaDataset(config_global=...)``.

    Every ``kafka.client`` property is sorted into one class (tables in ``properties.py``, taken
    from librdkafka's CONFIGURATION.md at v1.5.0 and v2.x):

    - passed to tfio: every global or consumer property v1.5.0 knows, topic-level consumer ones
      included, after the value checks below;
    - skipped for tfio, still given to confluent-kafka: producer-only properties; newer group,
      share-group and telemetry properties (tfio joins no group); newer connection tuning
      (timeouts, backoff caps, re-bootstrap) whose absence changes timing, not what is read or how
      it is secured; newer properties set to the one value v1.5.0 always behaves as
      (``client.dns.lookup=use_all_dns_ips``, ``sasl.oauthbearer.method=default``);
    - refused with ConfigError naming the key: properties stream-trainer sets itself, callbacks,
      Kerberos (GSSAPI), newer identity/trust/OIDC properties v1.5.0 cannot honour, and keys no
      librdkafka knows. Also refused: GSSAPI or no mechanism with SASL, OAUTHBEARER without
      ``enable.sasl.oauthbearer.unsecure.jwt=true``, a value containing '=' and hostname
      verification (``ssl.endpoint.identification.algorithm=https``), see ``check_value``.

    Raises ConfigError in one line; the message never contains a secret value.
    """
    client = kafka.client
    _check_protocol_and_mechanism(client)
    out = list(TFIO_FIXED)
    for key, value in client.items():
        _refuse_ours(key)
        if key in props.KERBEROS:
            raise _refuse(key, "is a Kerberos setting; tensorflow-io's librdkafka is built without "
                               "GSSAPI/Kerberos, use SASL mechanism SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN")
        if key in props.PRODUCER_ONLY or key in props.NEWER_GROUP_ONLY or key in props.NEWER_TUNING:
            continue
        if key in props.NEWER_DEFAULT_ONLY:
            if value.strip().lower() == props.NEWER_DEFAULT_ONLY[key]:
                continue
            raise _refuse(key, f"is not supported by {TFIO} except with its default value "
                               f"'{props.NEWER_DEFAULT_ONLY[key]}'")
        if key in props.NEWER_UNSUPPORTED:
            hint = props.NEWER_UNSUPPORTED[key]
            why = f"is not supported by {TFIO}, which reads the training data"
            raise _refuse(key, f"{why}; {hint}" if hint else why)
        if key not in props.TFIO_PASSED:
            raise _refuse(key, "is not a librdkafka property (a typo?); see librdkafka's CONFIGURATION.md")
        check_value(key, value)
        out.append(f"{key}={value}")
    return out


def _protocol_and_mechanism(client: dict[str, str]) -> tuple[str, str, str]:
    """The protocol (refused unless Kafka knows it), the key that names the SASL mechanism and its value."""
    protocol = client.get("security.protocol", "plaintext").strip().lower()
    if protocol not in PROTOCOLS:
        refused = _refuse("security.protocol", "must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL")
        raise refused
    key = "sasl.mechanism" if "sasl.mechanism" in client else "sasl.mechanisms"
    return protocol, key, client.get(key, "").strip().upper()


def _check_protocol_and_mechanism(client: dict[str, str]) -> None:
    protocol, key, mechanism = _protocol_and_mechanism(client)
    if mechanism == "GSSAPI":
        why = ("is GSSAPI, but tensorflow-io's librdkafka is built without GSSAPI/Kerberos; "
               "use SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN")
        raise _refuse(key, why)
    if protocol.startswith("sasl_") and not mechanism:
        refused = _refuse("sasl.mechanism", f"must be set with security.protocol={protocol.upper()}: librdkafka's "
                                            "default is GSSAPI/Kerberos, which tensorflow-io's librdkafka is built "
                                            "without; use SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN")
        raise refused
    if mechanism and mechanism not in MECHANISMS:
        raise _refuse(key, f"must be one of {', '.join(sorted(MECHANISMS))}")
    if mechanism == "OAUTHBEARER" and client.get("enable.sasl.oauthbearer.unsecure.jwt", "").lower() != "true":
        raise _refuse(key, f"is OAUTHBEARER, which {TFIO} can only use with unsecured test tokens "
                           "(enable.sasl.oauthbearer.unsecure.jwt=true): it has no OIDC token endpoint support")


def check_value(key: str, value: str) -> None:
    """Refuse a value tfio cannot take; messages never show a secret's value."""
    if "=" in value:
        # tfio splits "key=value" at every '=' and refuses the setting, printing all of it.
        what = "a password without '='" if is_secret(key) else "a value without '='"
        raise _refuse(key, f"contains '=', which tensorflow-io cannot pass to its librdkafka (it splits "
                           f"each setting at '=', refuses it and prints it whole); use {what}")
    if key == "ssl.endpoint.identification.algorithm" and value.strip().lower() == "https":
        raise _refuse(key, "is https, but tensorflow-io's librdkafka 1.5.0 hangs instead of connecting when "
                           "asked to verify the broker's hostname; remove the key: stream-trainer's "
                           "confluent-kafka clients verify the hostname by default, and the preflight check "
                           "proves every broker's certificate names its address before tensorflow-io "
                           "connects (docs/operations.md)")


# Properties naming a file or folder: a missing one makes every client fail at creation.
PATH_KEYS = ("ssl.ca.location", "ssl.certificate.location", "ssl.key.location", "ssl.keystore.location",
             "ssl.crl.location")


def check_values(kafka: KafkaConfig) -> None:
    """Refuse, naming the key and librdkafka's reason, a value tensorflow-io's librdkafka 1.5.0 would refuse.

    Asked of that library itself (``tfio_librdkafka``); where it cannot be asked, 1.5.0's value
    rules in ``values_1_5`` decide. Secret values are not checked: librdkafka takes any string.
    """
    settings = dict(p.split("=", 1) for p in tfio_properties(kafka)[len(TFIO_FIXED):])
    settings = {k: v for k, v in settings.items() if not is_secret(k)}
    asked = tfio_librdkafka.refusals(settings)
    if asked is None:
        log.debug("tensorflow-io's librdkafka could not be asked about kafka.client values; checked against "
                 "librdkafka 1.5.0's value rules instead")
        refused = {k: why for k, v in settings.items() if (why := values_1_5.problem(k, v))}
        version = "1.5.0"
    else:
        version, refused = asked
    for key, value in settings.items():
        if key in refused:
            reason = redact(" ".join(refused[key].split()), secret_values(kafka))
            raise _refuse(key, f"has a value that tensorflow-io's librdkafka {version or '1.5.0'} refuses: {reason}")
        if key in values_1_5.INTEGER and not re.fullmatch(r"[+-]?\d+", value.strip()):
            # librdkafka reads the leading digits and drops the rest: "50MB" would be 50 bytes.
            read_as = values_1_5.strtol_as_int(value)
            raise _refuse(key, f"must be a whole number (librdkafka would read '{value}' as {read_as}); "
                               f"write the number alone, in the unit the name says")


def _refuse_ours(key: str) -> None:
    """What no client of ours may be given, whichever reader: a property the trainer sets itself, a callback."""
    if key in props.OWNED:
        use = props.OWNED[key]
        instead = use.removeprefix("nothing: ") if use.startswith("nothing") else f"use '{use}' instead"
        raise _refuse(key, f"is set by stream-trainer itself; remove it ({instead})")
    if key in props.CALLBACKS:
        raise _refuse(key, "is a callback, which a config file cannot provide; remove it")


def confluent_properties(kafka: KafkaConfig) -> dict[str, str]:
    """``kafka.client`` for the confluent-kafka reader: every property, after refusing what no
    client of ours may be given (see the module docstring). Raises ConfigError in one line."""
    client = kafka.client
    for name in client:
        _refuse_ours(name)
    _, key, mechanism = _protocol_and_mechanism(client)
    if mechanism and mechanism not in CONFLUENT_MECHANISMS:
        raise _refuse(key, f"must be one of {', '.join(sorted(CONFLUENT_MECHANISMS))}")
    return dict(client)


def check(kafka: KafkaConfig, reader: str = "tensorflow-io") -> None:
    """Every start-time check on ``kafka.client`` that needs no broker: raise ConfigError, or log what is
    risky but allowed. ``stream-trainer run`` and ``check-config`` both call this one function.
    ``reader`` is ``trainer.source.reader`` as chosen: tensorflow-io's refusals apply only to it."""
    tfio = reader == "tensorflow-io"
    if tfio:
        tfio_properties(kafka)
    else:
        confluent_properties(kafka)
    for key in PATH_KEYS:
        path = kafka.client.get(key)
        if path and path != "probe" and not Path(path).exists():
            raise _refuse(key, f"names {path}, which does not exist")
    client = {k: v.strip().lower() for k, v in kafka.client.items()}
    tls = client.get("security.protocol", "plaintext") in {"ssl", "sasl_ssl"}
    if tls and client.get("ssl.endpoint.identification.algorithm") == "none":
        log.warning("kafka.client.ssl.endpoint.identification.algorithm=none: no client verifies that the "
                    "broker's certificate names the broker; anyone with a certificate from a trusted CA "
                    "can pose as it")
    if tls and client.get("enable.ssl.certificate.verification") == "false":
        log.warning("kafka.client.enable.ssl.certificate.verification=false: broker certificates are not "
                    "verified at all")
    if client.get("security.protocol") == "sasl_plaintext" and client.get("sasl.mechanism",
                                                                           client.get("sasl.mechanisms")) == "plain":
        log.warning("SASL PLAIN over SASL_PLAINTEXT sends the password unencrypted; use SASL_SSL")
    if tfio:
        check_values(kafka)


# --- keeping secrets out of logs -------------------------------------------------------------

# key<separator>value, in the forms secrets reach a log line: "sasl.password=x", "password: x",
# "'sasl.password': 'x'", JSON, JAAS (password="x").
_KEY_VALUE = re.compile(
    r"""(?P<key>[\w.\-]*(?:password|secret|passphrase)[\w.\-]*)"""
    r"""(?P<sep>['"]?\s*[:=]\s*['"]?)"""
    r"""(?P<value>[^\s'",;)}\]]+)""",
    re.IGNORECASE)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with secret values replaced by ``***``.

    Two passes: every value following a key named like a secret, then every known secret value
    wherever it appears (librdkafka or tfio may echo one in a form no pattern foresees).
    """
    text = _KEY_VALUE.sub(lambda m: f"{m['key']}{m['sep']}{REDACTED}", text)
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret:
            text = text.replace(secret, REDACTED)
    return text


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's message (and traceback) before any handler writes it."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = list(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message, self.secrets)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        return True


def install_redaction(kafka: KafkaConfig, logger: logging.Logger | None = None) -> RedactingFilter:
    """Redact ``kafka``'s secrets from everything ``logger`` (the root logger) and its handlers write.

    The filter goes on every handler: a filter on a logger does not see records that child
    loggers (``stream_trainer.*``, ``librdkafka``) propagate to it. Call it after logging is
    configured; a handler added later needs ``handler.addFilter(filter)`` too.
    """
    target = logger or logging.getLogger()
    redactor = RedactingFilter(secret_values(kafka))
    target.addFilter(redactor)
    for handler in target.handlers:
        handler.addFilter(redactor)
    return redactor


def quiet_tensorflow_info_log() -> None:
    """Make TensorFlow's C++ log skip INFO (``TF_CPP_MIN_LOG_LEVEL`` >= 1).

    tensorflow-io logs every Kafka setting it applies at INFO, ``sasl.password=...`` included,
    straight to stderr from C++ where no Python filter reaches. TensorFlow reads the variable once,
    when its C++ library loads, so this must run before the process first imports TensorFlow
    (``cli._cmd_run`` calls it through ``guard_secrets`` right after loading the config). Raises
    RuntimeError if TensorFlow is already loaded with INFO on: too late to hide anything.
    """
    current = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip()
    if current.isdigit() and int(current) >= 1:
        return
    if "tensorflow" in sys.modules:
        msg = "TensorFlow is already imported with TF_CPP_MIN_LOG_LEVEL<1; call quiet_tensorflow_info_log() earlier"
        raise RuntimeError(msg)
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "1"
    if current:
        log.warning("TF_CPP_MIN_LOG_LEVEL=%s raised to 1: tensorflow-io logs every Kafka setting, passwords "
                    "included, at INFO", current)


def guard_secrets(kafka: KafkaConfig) -> None:
    """Both protections, for a process about to run the trainer: log redaction and TF's INFO log off."""
    install_redaction(kafka)
    quiet_tensorflow_info_log()
