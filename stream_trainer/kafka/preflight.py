"""Can we talk to this cluster as configured? Asked with confluent-kafka before tfio connects, then periodically.

tensorflow-io's librdkafka 1.5.0 never reports a wrong password, an untrusted certificate or a
protocol mismatch: it logs and retries forever. confluent-kafka's librdkafka reports each within
a second and verifies the broker's hostname by default. Both read the same ``kafka.client``
settings, so when ``check`` passes, tfio's connections authenticate too, and every broker tfio
will talk to has shown a certificate that a trusted CA issued for its address, which tfio
cannot verify itself.

Classification: librdkafka's error codes first (``_AUTHENTICATION``: credentials or mechanism;
``_SSL``/``_TRANSPORT`` "certificate verify failed"; "connecting to a PLAINTEXT broker listener?").
librdkafka reports an untrusted CA and a hostname mismatch alike, and a plaintext client against a
TLS listener only as disconnects, so for those ``listener.diagnose`` asks the listener directly.

Why a fresh client per check, not one kept open: SASL and TLS are checked when a connection
opens; an open connection keeps working after the password is revoked or the certificate replaced
(brokers re-authenticate only with ``connections.max.reauth.ms``). Measured on this machine
(SASL_SSL, SCRAM-SHA-512, 1 broker on localhost): about 75 ms and 20 ms of CPU per check.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from stream_trainer.config import KafkaConfig
from stream_trainer.errors import AuthenticationError, AuthorizationError, BrokerUnavailableError, ConfigError, one_line
from stream_trainer.kafka import listener
from stream_trainer.kafka.cluster import client_config
from stream_trainer.kafka.security import redact, secret_values
from stream_trainer.threads import Threads

log = logging.getLogger(__name__)

# After this long without metadata, look at the listener ourselves: a protocol mismatch shows up
# in librdkafka only as disconnects, which an unreachable-but-starting broker also produces.
PROBE_AFTER_S = 1.0
# The watchdog's second look after a security failure comes this much later (or sooner).
RECHECK_S = 5.0


class _AtDebug:
    """Hands librdkafka's log lines from preflight's own clients to ``logger`` at DEBUG.

    A failing check makes librdkafka log the same "SSL handshake failed" or "Authentication
    failed" line at every reconnect, up to ten before the check gives up; the error the check
    raises says it once, classified. So these lines are there for ``--log-level DEBUG`` only.
    confluent-kafka calls ``log(level, fmt, *args)`` on whatever object ``logger`` is.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger

    def log(self, level: int, msg: str, *args: object) -> None:
        self.logger.debug(msg, *args)


PREFLIGHT_RDKAFKA_LOG = _AtDebug(logging.getLogger("librdkafka.preflight"))


@dataclass
class _Attempt:
    """What one metadata attempt saw: librdkafka's errors, newest last."""

    errors: list[KafkaError] = field(default_factory=list)
    examined: int = 0  # errors before this index were already classified

    def texts(self) -> list[str]:
        return [e.str() for e in self.errors if e.code() != KafkaError._ALL_BROKERS_DOWN]


def _who(kafka: KafkaConfig) -> str:
    user = kafka.client.get("sasl.username")
    return f"user '{user}'" if user and listener.protocol(kafka).startswith("sasl_") else "this client (no SASL user)"


def _detail(text: str, kafka: KafkaConfig) -> str:
    """librdkafka's error text, trimmed of its address prefix and timing suffix, secrets removed."""
    text = re.sub(r"^\S*/(?:bootstrap|\d+): ", "", one_line(text))
    text = text.split(" (after ")[0]
    return redact(text, secret_values(kafka))


# --- asking the cluster ------------------------------------------------------------------------

def _admin(kafka: KafkaConfig, **extra: object) -> AdminClient:
    """A fresh admin client; ConfigError when librdkafka refuses the settings (a bad CA file, a bad value)."""
    try:
        return AdminClient(client_config(kafka, logger=PREFLIGHT_RDKAFKA_LOG, **extra))
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        detail = one_line(err.str() if isinstance(err, KafkaError) else exc)
        msg = f"librdkafka refused the kafka.client settings: {redact(detail, secret_values(kafka))}"
        raise ConfigError(msg) from exc


def _security_error(attempt: _Attempt, kafka: KafkaConfig, servers: str,
                    deadline: float) -> BrokerUnavailableError | None:
    """A definite security failure among librdkafka's new errors, or None."""
    new, attempt.examined = attempt.errors[attempt.examined:], len(attempt.errors)
    for err in new:
        text = err.str()
        if err.code() == KafkaError._AUTHENTICATION:
            mechanism = (kafka.client.get("sasl.mechanism") or kafka.client.get("sasl.mechanisms") or "").upper()
            if "Unsupported SASL mechanism" in text:
                offered = text.split("supported mechanisms: ")[-1].split(" ")[0] if "mechanisms: " in text else "?"
                msg = (f"SASL mechanism {mechanism} is not enabled on the broker (it offers {offered}); set "
                       f"kafka.client.sasl.mechanism to one of those")
                return AuthenticationError(msg)
            msg = (f"SASL authentication failed for {_who(kafka)} with {mechanism} at {servers}: wrong username "
                   f"or password, or no {mechanism} credential for that user on the cluster; check "
                   f"kafka.client.sasl.username and kafka.client.sasl.password (broker said: {_detail(text, kafka)})")
            return AuthenticationError(msg)
        verify_failed = "certificate verify failed" in text
        if verify_failed or err.code() == KafkaError._SSL or "connecting to a PLAINTEXT broker listener" in text:
            for host, port in listener.addresses(servers):
                found = listener.diagnose(kafka, host, port, max(0.5, min(3.0, deadline - time.monotonic())))
                if found is not None:
                    return found
            if verify_failed:  # never transient, even where our own handshake could not say why
                msg = f"TLS handshake with {servers} failed: {_detail(text, kafka)}"
                return AuthenticationError(msg)
    return None


def _metadata(kafka: KafkaConfig, servers: str, topic: str | None, deadline: float,
              timeout_s: float) -> Any:
    """Metadata from ``servers`` with a fresh client, or the error that explains why none came."""
    attempt = _Attempt()
    admin = _admin(kafka, **{"bootstrap.servers": servers, "error_cb": attempt.errors.append})
    started = time.monotonic()
    probed = False
    while True:
        try:
            md = admin.list_topics(topic=topic, timeout=max(0.1, min(0.5, deadline - time.monotonic())))
            if md.brokers:
                return md
        except KafkaException:
            pass
        admin.poll(0)  # error_cb runs only inside poll
        found = _security_error(attempt, kafka, servers, deadline)
        if found is None and not probed and time.monotonic() - started >= PROBE_AFTER_S:
            probed = True
            for host, port in listener.addresses(servers):
                found = found or listener.diagnose(kafka, host, port, 1.0)
        if found is not None:
            raise found
        if time.monotonic() >= deadline:
            texts = attempt.texts()
            detail = _detail(texts[-1], kafka) if texts else "no answer"
            if any(listener.tcp_open(h, p, 1.0) for h, p in listener.addresses(servers)):
                msg = (f"Kafka at {servers} accepts connections but sent no metadata within {timeout_s:.0f} s "
                       f"({detail}); check that kafka.client.security.protocol matches the listener (SASL_SSL "
                       f"needs sasl.mechanism, sasl.username and sasl.password; SSL needs none)")
            else:
                msg = (f"Kafka broker unreachable at {servers} after {timeout_s:.0f} s ({detail}); "
                       f"check kafka.bootstrap_servers or KAFKA_BOOTSTRAP")
            raise BrokerUnavailableError(msg)


def _check_group(kafka: KafkaConfig, group: str, deadline: float) -> None:
    """AuthorizationError if an ACL keeps us from ``group``; any other answer is the caller's business.

    Asked with DescribeGroups because a consumer's ``committed()`` reports a missing group ACL
    only as a timeout. Not with ListConsumerGroupOffsets: confluent-kafka 2.16.1 crashes the
    process (SIGSEGV) on its answer for a group that has committed nothing yet.
    """
    admin = _admin(kafka)
    try:
        wait_s = max(1.0, deadline - time.monotonic())
        (future,) = admin.describe_consumer_groups([group], request_timeout=wait_s).values()
        future.result()
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        if isinstance(err, KafkaError) and err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED:
            msg = (f"{_who(kafka)} may not use consumer group '{group}' on {kafka.bootstrap_servers}; grant it READ "
                   f"on the group (prefixed: the trainer also uses '{group}-tfio' and '{group}-reread'; "
                   f"docs/operations.md)")
            raise AuthorizationError(msg) from exc


def check(kafka: KafkaConfig, topic: str | None = None, timeout_s: float | None = None,
          group: str | None = None) -> None:
    """Prove within ``kafka.connect_timeout_s`` that the cluster answers us as configured, or raise.

    Success means: metadata answered, SASL accepted our credentials, and (with TLS) every broker
    in the metadata showed a certificate that the configured CA trusts and that names its address.
    With ``topic``, we may also DESCRIBE it (a missing topic is left to the caller to report);
    with ``group``, we may also use that consumer group.

    Raises, with one line that names the problem and never a secret:
    AuthenticationError (wrong username/password, mechanism not enabled, untrusted certificate,
    hostname mismatch, plaintext client on a TLS listener or the reverse), AuthorizationError (an
    ACL forbids describing ``topic`` or using ``group``), BrokerUnavailableError (nothing answered
    in time).
    """
    timeout = kafka.connect_timeout_s if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout
    md = _metadata(kafka, kafka.bootstrap_servers, topic, deadline, timeout)
    if topic is not None and topic in md.topics and md.topics[topic].error is not None:
        code = md.topics[topic].error.code()
        if code == KafkaError.TOPIC_AUTHORIZATION_FAILED:
            msg = (f"{_who(kafka)} may not DESCRIBE topic '{topic}' on {kafka.bootstrap_servers}; grant it "
                   f"DESCRIBE and READ on the topic (docs/operations.md lists every ACL each program needs)")
            raise AuthorizationError(msg)
    if group is not None:
        _check_group(kafka, group, deadline)
    if listener.protocol(kafka) not in {"ssl", "sasl_ssl"}:
        return
    # tfio connects to every partition leader without verifying its hostname: prove each one here.
    bootstrap = {f"{h}:{p}" for h, p in listener.addresses(kafka.bootstrap_servers)}
    for broker in md.brokers.values():
        address = f"{broker.host}:{broker.port}"
        if bootstrap == {address}:
            continue  # the only bootstrap server is this broker: already proven above
        try:
            _metadata(kafka, address, None, deadline, timeout)
        except (AuthenticationError, AuthorizationError):
            raise
        except BrokerUnavailableError as exc:
            # A broker restarting right now is the trainer's to ride out, not a setting to fix.
            log.warning("preflight: broker %d at %s did not answer: %s", broker.id, address, exc)


class Watchdog:
    """Re-runs ``check`` every ``interval_s`` on a supervised thread, each time on fresh connections.

    Two security failures in a row (AuthenticationError, AuthorizationError: credentials revoked,
    certificate replaced by one we do not trust, ACL removed) end the thread with that error:
    passed to ``on_failure`` when one is given, else raised, so that the supervisor (``Threads``)
    stops the trainer with it. The second look keeps one unlucky handshake during a broker restart
    from stopping training. An unreachable cluster is not a failure here: the trainer rides out
    outages itself. A problem is reported within ``2 * (interval_s + kafka.connect_timeout_s)``
    of its start. Any other exception ends the thread too, and the supervisor reports it.
    """

    def __init__(self, kafka: KafkaConfig, topic: str | None,
                 on_failure: Callable[[BrokerUnavailableError], None] | None = None,
                 interval_s: float = 30.0, group: str | None = None) -> None:
        self.kafka = kafka
        self.topic = topic
        self.group = group
        self.on_failure = on_failure
        self.interval_s = interval_s
        self.failure: BrokerUnavailableError | None = None
        self.passed = 0  # checks that found nothing wrong: how a caller knows the watchdog is looking
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, threads: Threads | None = None) -> Watchdog:
        """Run the checks under ``threads`` (the trainer's); alone (tools, tests) under a private one."""
        self._thread = (threads or Threads()).start("kafka-watchdog", self._run)
        return self

    def stop(self, timeout_s: float | None = None) -> None:
        """Ask the thread to end and wait for it (a check in flight finishes first)."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _run(self) -> None:
        strikes = 0
        while not self._closed.wait(self.interval_s if strikes == 0 else min(self.interval_s, RECHECK_S)):
            try:
                check(self.kafka, self.topic, group=self.group)
                self.passed += 1
                strikes = 0
            except (AuthenticationError, AuthorizationError) as exc:
                strikes += 1
                log.warning("kafka watchdog: %s", exc)
                if strikes >= 2:
                    self.failure = exc
                    if self.on_failure is None:
                        raise
                    self.on_failure(exc)
                    return
            except BrokerUnavailableError as exc:
                strikes = 0
                log.info("kafka watchdog: cluster not answering (the trainer waits it out): %s", exc)
