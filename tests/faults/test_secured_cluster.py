"""Issue 13: a SASL_SSL cluster with ACLs, as production runs it.

The module's own broker serves a SASL_SSL listener (CA and broker certificate made by openssl for
this run, SCRAM-SHA-512 users created at format time, PLAIN users in JAAS) with KRaft's
StandardAuthorizer on. Its PLAINTEXT listener is the test's super-user back door for set-up
(topics, ACLs, revoking a credential, swapping the certificate). Each program gets exactly the
ACLs docs/operations.md lists for it, so these tests also check that list.

- the programs work over SASL_SSL: ``pet-producer`` (PLAIN) and ``stream-trainer run``
  (SCRAM-SHA-512), both configured through ``kafka.client`` with passwords from ``${ENV}``;
  tensorflow-io reads and confluent-kafka commits through SCRAM-SHA-512 and PLAIN;
- every misconfiguration ends ``stream-trainer run`` with one line naming it, exit 2, within
  ``connect_timeout_s`` and without printing any password (tensorflow-io would hang instead);
- revoking a credential or swapping the broker's certificate is caught by the next check.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from faultlib import (
    ROOT,
    Program,
    Rig,
    child_env,
    latest_checkpoint,
    lock_is_free,
    missing_offsets,
    read_trained,
    trained_counts,
)

from stream_trainer.config import KafkaConfig
from stream_trainer.errors import AuthenticationError, AuthorizationError
from stream_trainer.kafka import Cluster, preflight
from stream_trainer.workbench.broker import LocalBroker, SaslSsl, make_ca, make_tls_files
from tests.pets import produce_pets
from tests.stacks import needs_tfio

# The module's broker starts only for the tests that run: every `make test` runs the two marked
# fast below (``faults`` alone); the rest run in `make test-faults`.
pytestmark = [pytest.mark.faults]

PREFIX = "sec-"  # every topic and group of this module: the ACLs are granted on this prefix
CONNECT_TIMEOUT_S = 5
# `stream-trainer run` reaches its Kafka checks before TensorFlow loads: interpreter start-up and
# confluent-kafka's import are all that comes on top of the connect timeout.
START_OVERHEAD_S = 15
# From a stop to the process's end: the final checkpoint and export (about 10 s on 2 cores) and
# every part's close (each bounded at 5 s); as in test_supervision.py.
EXIT_AFTER_STOP_S = 45


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalBroker]:
    tmp = tmp_path_factory.mktemp("secured")
    sasl = SaslSsl.create(tmp / "tls", users=("producer", "trainer", "revocable", "running", "outsider"), acls=True)
    broker = LocalBroker(tmp / "kafka", heap="384m", sasl_ssl=sasl)
    broker.start()
    try:
        _grant_documented_acls(broker.bootstrap)
        yield broker
    finally:
        broker.stop()


def _grant_documented_acls(plaintext: str) -> None:
    """The ACLs of docs/operations.md, on the module's topic and group prefix."""
    from confluent_kafka.admin import (
        AclBinding,
        AclOperation,
        AclPermissionType,
        AdminClient,
        ResourcePatternType,
        ResourceType,
    )

    def allow(user: str, resource: ResourceType, operation: AclOperation) -> AclBinding:
        return AclBinding(resource, PREFIX, ResourcePatternType.PREFIXED, f"User:{user}", "*", operation,
                          AclPermissionType.ALLOW)

    topic, group = ResourceType.TOPIC, ResourceType.GROUP
    bindings = [allow("producer", topic, op) for op in (AclOperation.WRITE, AclOperation.DESCRIBE,
                                                        AclOperation.CREATE)]
    for user in ("trainer", "revocable", "running"):
        bindings += [allow(user, topic, AclOperation.READ), allow(user, topic, AclOperation.DESCRIBE),
                     allow(user, topic, AclOperation.WRITE),  # the dead-letter topic; see docs/operations.md
                     allow(user, group, AclOperation.READ)]
    admin = AdminClient({"bootstrap.servers": plaintext})
    for fut in admin.create_acls(bindings, request_timeout=30).values():
        fut.result()


def _user(broker: LocalBroker, user: str, mechanism: str = "SCRAM-SHA-512", **extra: str) -> KafkaConfig:
    assert broker.sasl_ssl is not None
    return KafkaConfig(bootstrap_servers=broker.secure_bootstrap, connect_timeout_s=CONNECT_TIMEOUT_S,
                       client={**broker.sasl_ssl.client(user, mechanism), **extra})


def _passwords(broker: LocalBroker) -> list[str]:
    assert broker.sasl_ssl is not None
    return [*broker.sasl_ssl.users.values(), broker.sasl_ssl.tls.keystore_password]


def _topic(plaintext: str, partitions: int = 1, with_dead_letter: bool = False) -> str:
    name = f"{PREFIX}{uuid.uuid4().hex[:8]}"
    admin = Cluster(KafkaConfig(bootstrap_servers=plaintext))
    try:
        admin.ensure_topics({name: partitions, **({f"{name}-dlq": 1} if with_dead_letter else {})})
    finally:
        admin.close()
    return name


# --- the programs over SASL_SSL ----------------------------------------------------------------

@needs_tfio
@pytest.mark.slow
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "PLAIN"])
def test_tfio_reads_and_confluent_commits_and_measures_lag_over_sasl_ssl(secured: LocalBroker, mechanism: str) -> None:
    import tensorflow_io.kafka as tfio_kafka

    from stream_trainer.kafka import security

    topic = _topic(secured.bootstrap)
    writer_config = _user(secured, "producer", mechanism)
    writer = Cluster(writer_config)
    try:
        for i in range(20):
            writer.producer.produce(topic, f"m{i}".encode())
        assert writer.producer.flush(30) == 0
    finally:
        writer.close()

    trainer = _user(secured, "trainer", mechanism)
    preflight.check(trainer, topic)
    ds = tfio_kafka.KafkaDataset([f"{topic}:0:0:-1"], servers=trainer.bootstrap_servers, group=f"{PREFIX}tfio",
                                 eof=True, timeout=1000, config_global=security.tfio_properties(trainer))
    assert [v.numpy() for v in ds] == [f"m{i}".encode() for i in range(20)]

    group = Cluster(trainer, group_id=f"{PREFIX}{uuid.uuid4().hex[:6]}")
    try:
        assert group.committed(topic, [0]) == {}
        group.commit(topic, {0: 15})
        assert group.committed(topic, [0]) == {0: 15}
        assert group.watermarks(topic, [0])[0].high - 15 == 5  # the lag a dashboard shows
    finally:
        group.close()


@pytest.mark.slow
def test_producer_and_trainer_run_over_sasl_ssl_with_only_the_documented_acls(
        secured: LocalBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert secured.sasl_ssl is not None
    monkeypatch.setenv("PRODUCER_PASSWORD", secured.sasl_ssl.users["producer"])
    monkeypatch.setenv("TRAINER_PASSWORD", secured.sasl_ssl.users["trainer"])
    topic = f"{PREFIX}{uuid.uuid4().hex[:8]}"  # created by the producer: its CREATE ACL
    rig = Rig(tmp=tmp_path, bootstrap=secured.secure_bootstrap, topic=topic, group=f"{PREFIX}{uuid.uuid4().hex[:6]}",
              partitions=2)
    ca = str(secured.sasl_ssl.tls.ca_cert)
    producer_client = {"security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN", "sasl.username": "producer",
                       "sasl.password": "${PRODUCER_PASSWORD}", "ssl.ca.location": ca}
    trainer_client = {**producer_client, "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "trainer",
                      "sasl.password": "${TRAINER_PASSWORD}"}
    trained = tmp_path / "trained.log"
    try:
        # The producer keeps sending: a trainer holds its shuffle window back until more arrives.
        producer = rig.producer(rig.write_config("producer.yaml", rig.settings(
            kafka__client=producer_client, producer__rate=20)))
        trainer = rig.trainer(rig.write_config("trainer.yaml", rig.settings(
            kafka__client=trainer_client, trainer__loop__trained_log=str(trained))))
        rig.wait_until(lambda: len(read_trained(trained)) >= 40, 240, "40 trained messages",
                       alive=(trainer, producer))
        assert trainer.stop() == 0, rig.logs()
        assert producer.stop() == 0, rig.logs()
    finally:
        rig.stop_all()
    group = Cluster(KafkaConfig(bootstrap_servers=secured.bootstrap), group_id=rig.group)
    try:
        committed = group.committed(topic, [0, 1])
    finally:
        group.close()
    # The final commit covers exactly what was trained: nothing below it skipped.
    assert sum(committed.values()) >= 40, committed
    assert not missing_offsets(trained_counts(trained), committed), committed
    _assert_no_secret(rig.programs, _passwords(secured))


def _assert_no_secret(programs: list[Program], secrets: list[str]) -> None:
    for program in programs:
        text = "".join(program.output)
        for secret in secrets:
            assert secret not in text, f"{program.name} printed a password"


# --- misconfigurations: one line, exit 2, in time, no password ---------------------------------

def _case(broker: LocalBroker, tmp: Path) -> dict[str, tuple[dict[str, Any], str]]:
    """name -> (kafka settings, the fragment the error line must hold)."""
    assert broker.sasl_ssl is not None
    other_ca, _ = make_ca(tmp / "other-ca", "some other CA")
    good = broker.sasl_ssl.client("trainer")
    port = broker.secure_bootstrap.rsplit(":", 1)[1]
    return {
        "wrong_password_scram": ({"client": {**good, "sasl.password": "Wrong-but-secret-1"}},
                                 "SASL authentication failed for user 'trainer' with SCRAM-SHA-512"),
        "wrong_password_plain": ({"client": {**good, "sasl.mechanism": "PLAIN", "sasl.password": "Wrong-but-secret-2"}},
                                 "SASL authentication failed for user 'trainer' with PLAIN"),
        "unknown_user": ({"client": {**good, "sasl.username": "mallory"}},
                         "SASL authentication failed for user 'mallory'"),
        "mechanism_not_enabled": ({"client": {**good, "sasl.mechanism": "SCRAM-SHA-256"}},
                                  "SASL mechanism SCRAM-SHA-256 is not enabled on the broker"),
        "untrusted_ca": ({"client": {**good, "ssl.ca.location": str(other_ca)}},
                         "is not trusted by the configured CA"),
        "hostname_mismatch": ({"bootstrap_servers": f"localhost:{port}", "client": good},
                              "TLS hostname mismatch"),
        "plaintext_client_on_tls_listener": ({"client": {"security.protocol": "PLAINTEXT"}},
                                             "speaks TLS but kafka.client.security.protocol is PLAINTEXT"),
        "tls_client_on_plaintext_listener": ({"bootstrap_servers": broker.bootstrap, "client": good},
                                             "does not speak TLS but kafka.client.security.protocol is SASL_SSL"),
        "gssapi": ({"client": {**good, "sasl.mechanism": "GSSAPI"}}, "built without GSSAPI/Kerberos"),
        "equals_sign_in_password": ({"client": {**good, "sasl.password": "Secret=With=Equals"}},
                                    "'kafka.client.sasl.password' contains '='"),
        "hostname_verification": ({"client": {**good, "ssl.endpoint.identification.algorithm": "https"}},
                                  "'kafka.client.ssl.endpoint.identification.algorithm' is https"),
        "value_tfios_librdkafka_refuses": ({"client": {**good, "debug": "security,conf,broker"}},
                                           "'kafka.client.debug' has a value that tensorflow-io's librdkafka 1.5.0 "
                                           "refuses: Invalid value \"conf\" for configuration property \"debug\""),
        "no_acl_on_the_topic": ({"client": broker.sasl_ssl.client("outsider")},
                                "user 'outsider' may not DESCRIBE topic"),
        "no_acl_on_the_group": ({"client": good}, "user 'trainer' may not use consumer group 'stream-trainer'"),
    }


CASES = ["wrong_password_scram", "wrong_password_plain", "unknown_user", "mechanism_not_enabled", "untrusted_ca",
         "hostname_mismatch", "plaintext_client_on_tls_listener", "tls_client_on_plaintext_listener", "gssapi",
         "equals_sign_in_password", "hostname_verification", "value_tfios_librdkafka_refuses", "no_acl_on_the_topic",
         "no_acl_on_the_group"]


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_security_misconfiguration_is_one_line_exit_2_in_time_without_secrets(
        secured: LocalBroker, tmp_path: Path, case: str) -> None:
    kafka, fragment = _case(secured, tmp_path)[case]
    _assert_one_line_exit_2(secured, tmp_path, case, kafka, fragment, group=("stream-trainer"
                                                                           if case == "no_acl_on_the_group" else None))


def _assert_one_line_exit_2(secured: LocalBroker, tmp_path: Path, case: str, kafka: dict[str, Any], fragment: str,
                            group: str | None = None) -> None:
    """``stream-trainer run`` with ``kafka`` settings: exit 2, one line holding ``fragment``, in time, no password."""
    topic = _topic(secured.bootstrap, with_dead_letter=True)
    settings = {"kafka": {"bootstrap_servers": secured.secure_bootstrap, "connect_timeout_s": CONNECT_TIMEOUT_S,
                          **kafka},
                # All under the ACL prefix: a check that let a bad setting through must reach tfio.
                "topics": {"train": topic, "eval": f"{topic}-eval", "dead_letter": f"{topic}-dlq"},
                "trainer": {"source": {"group_id": group or f"{topic}-g"},
                            "metrics": {"port": 0}, "checkpoint": {"dir": str(tmp_path / "ckpt")},
                            "loop": {"eval_wait_s": 0, "snapshot_dir": str(tmp_path / "snapshots"),
                                                       "tensorboard_dir": str(tmp_path / "tensorboard")}}}
    path = tmp_path / "trainer.yaml"
    path.write_text(yaml.safe_dump(settings))
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "stream_trainer.cli", "run", "--config", str(path)], cwd=ROOT,
                          env=child_env(), capture_output=True, text=True, timeout=CONNECT_TIMEOUT_S + 60)
    took = time.monotonic() - start
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}:\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("stream-trainer: error: ")]
    assert len(errors) == 1, output[-3000:]
    assert fragment in errors[0], errors[0]
    assert not output.split(errors[0], 1)[1].strip(), f"the error goes on over several lines:\n{output}"
    # Nothing before it either: librdkafka's own lines (ten identical "SSL handshake failed" ones
    # while the check retried) said less than the error line says once.
    assert output.strip().splitlines() == [errors[0]], f"more than the error line:\n{output}"
    secrets = [*_passwords(secured), *(v for k, v in kafka.get("client", {}).items() if "password" in k)]
    leaked = [s for s in secrets if s in output]
    assert not leaked, f"a password is in the output:\n{output}"
    assert took < CONNECT_TIMEOUT_S + START_OVERHEAD_S, f"{case}: took {took:.1f} s"
    print(f"{case}: exit 2 after {took:.1f} s: {errors[0]}")


# --- credentials revoked, certificate swapped --------------------------------------------------

@pytest.mark.slow
def test_revoked_credential_is_caught_by_the_next_check_and_the_watchdog(secured: LocalBroker) -> None:
    from confluent_kafka.admin import AdminClient, ScramMechanism, UserScramCredentialDeletion

    revocable = _user(secured, "revocable")
    topic = _topic(secured.bootstrap)
    preflight.check(revocable, topic)
    long_lived = Cluster(revocable)  # an open, authenticated connection, as a running trainer has
    long_lived.wait_until_reachable()
    failures: list[Exception] = []
    fired = threading.Event()
    watchdog = preflight.Watchdog(revocable, topic, lambda exc: (failures.append(exc), fired.set()),
                                  interval_s=0.5).start()
    try:
        deadline = time.monotonic() + 2 * (0.5 + CONNECT_TIMEOUT_S)
        while watchdog.passed < 2 and not fired.is_set() and time.monotonic() < deadline:
            fired.wait(0.1)
        assert watchdog.passed >= 2 and not fired.is_set(), (watchdog.passed, failures)
        admin = AdminClient({"bootstrap.servers": secured.bootstrap})
        deletion = UserScramCredentialDeletion("revocable", ScramMechanism.SCRAM_SHA_512)
        for fut in admin.alter_user_scram_credentials([deletion]).values():
            fut.result(30)
        revoked_at = time.monotonic()
        bound = 2 * (0.5 + CONNECT_TIMEOUT_S) + preflight.RECHECK_S
        assert fired.wait(bound + 5), f"the watchdog did not notice within {bound:.0f} s"
        print(f"watchdog reported the revoked credential after {time.monotonic() - revoked_at:.1f} s")
    finally:
        watchdog.stop(30)
    assert isinstance(failures[0], AuthenticationError)
    assert "SASL authentication failed for user 'revocable'" in str(failures[0])
    # Why the check builds a fresh client: the connection opened before the revocation still works.
    assert topic in long_lived.admin.list_topics(timeout=10).topics
    long_lived.close()
    with pytest.raises(AuthenticationError, match="SASL authentication failed for user 'revocable'"):
        preflight.check(revocable, topic)


@pytest.mark.slow
def test_topic_without_acls_is_an_authorization_error_naming_the_user(secured: LocalBroker) -> None:
    topic = _topic(secured.bootstrap)
    with pytest.raises(AuthorizationError, match=rf"user 'outsider' may not DESCRIBE topic '{topic}'"):
        preflight.check(_user(secured, "outsider"), topic)


@pytest.mark.slow
def test_group_without_acls_is_an_authorization_error_naming_the_group(secured: LocalBroker) -> None:
    topic = _topic(secured.bootstrap)
    trainer = _user(secured, "trainer")
    preflight.check(trainer, topic, group=f"{PREFIX}granted")
    with pytest.raises(AuthorizationError, match=r"user 'trainer' may not use consumer group 'not-granted'"):
        preflight.check(trainer, topic, group="not-granted")


@pytest.mark.slow
def test_topic_creation_refused_by_an_acl_is_one_line_naming_the_user(secured: LocalBroker) -> None:
    trainer = Cluster(_user(secured, "trainer"))  # READ, DESCRIBE, WRITE on the prefix, but no CREATE
    topic = f"{PREFIX}{uuid.uuid4().hex[:8]}"
    try:
        with pytest.raises(AuthorizationError) as info:
            trainer.ensure_topics({topic: 1})
    finally:
        trainer.close()
    message = str(info.value)
    assert message.startswith(f"'trainer' may not create topic '{topic}'"), message
    assert "grant it CREATE on the topic" in message and "\n" not in message


@pytest.mark.slow
def test_swapped_broker_certificate_is_caught_by_the_next_check(secured: LocalBroker, tmp_path: Path) -> None:
    """The broker reloads a keystore from another CA (a dynamic listener update, no restart)."""
    assert secured.sasl_ssl is not None
    trainer = _user(secured, "trainer")
    preflight.check(trainer)
    original = secured.sasl_ssl.tls
    foreign = make_tls_files(tmp_path / "foreign")
    _set_keystore(secured, foreign.keystore, foreign.keystore_password)
    try:
        with pytest.raises(AuthenticationError, match="is not trusted by the configured CA"):
            _eventually_raises(lambda: preflight.check(trainer), 30)
    finally:
        _set_keystore(secured, original.keystore, original.keystore_password)
    _eventually_passes(lambda: preflight.check(trainer), 30)


def _set_keystore(broker: LocalBroker, keystore: Path, password: str) -> None:
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType

    prefix = "listener.name.sasl_ssl."
    entries = [ConfigEntry(f"{prefix}ssl.keystore.location", str(keystore),
                           incremental_operation=AlterConfigOpType.SET),
               ConfigEntry(f"{prefix}ssl.keystore.password", password, incremental_operation=AlterConfigOpType.SET),
               ConfigEntry(f"{prefix}ssl.key.password", password, incremental_operation=AlterConfigOpType.SET),
               ConfigEntry(f"{prefix}ssl.keystore.type", "PKCS12", incremental_operation=AlterConfigOpType.SET)]
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    resource = ConfigResource(ResourceType.BROKER, "1", incremental_configs=entries)
    for fut in admin.incremental_alter_configs([resource]).values():
        fut.result(30)


def _eventually_raises(call: Callable[[], None], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        call()  # raises once the broker serves the new certificate
        time.sleep(0.5)


def _eventually_passes(call: Callable[[], None], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            call()
            return
        except AuthenticationError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.mark.slow
def test_preflight_over_sasl_ssl_is_cheap_enough_to_repeat(secured: LocalBroker) -> None:
    trainer = _user(secured, "trainer")
    runs = 10
    wall, cpu = time.monotonic(), time.process_time()
    for _ in range(runs):
        preflight.check(trainer)
    wall, cpu = (time.monotonic() - wall) / runs, (time.process_time() - cpu) / runs
    print(f"preflight.check over SASL_SSL/SCRAM-SHA-512, fresh client each: {wall * 1000:.0f} ms wall, "
          f"{cpu * 1000:.0f} ms CPU")
    assert wall < 1.0


# --- in every `make test`: a trainer through SCRAM until its credential goes; a wrong password ---

def test_a_trainer_trains_over_scram_and_stops_with_one_line_exit_2_when_its_credential_is_revoked(
        secured: LocalBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The security watchdog of a running trainer (checks every 0.5 s here, 30 s by default) turns
    a deleted SCRAM credential into one line and exit 2, after a final checkpoint of what it trained."""
    from confluent_kafka.admin import AdminClient, ScramMechanism, UserScramCredentialDeletion

    assert secured.sasl_ssl is not None
    topic = _topic(secured.bootstrap, partitions=2, with_dead_letter=True)
    _topic_named(secured.bootstrap, f"{topic}-eval")
    ends = {0: 24, 1: 24}
    for p, n in ends.items():
        produce_pets(secured.bootstrap, topic, n, seed=p, size=40, partition=p)
    rig = Rig(tmp=tmp_path, bootstrap=secured.secure_bootstrap, topic=topic, group=f"{topic}-g", partitions=2)
    monkeypatch.setenv("RUNNING_PASSWORD", secured.sasl_ssl.users["running"])
    client = {**secured.sasl_ssl.client("running"), "sasl.password": "${RUNNING_PASSWORD}"}
    trained = tmp_path / "trained.log"
    config = rig.write_config("trainer.yaml", rig.settings(
        kafka__client=client, kafka__connect_timeout_s=CONNECT_TIMEOUT_S, trainer__loop__trained_log=str(trained)))
    interval_s = 0.5
    try:
        trainer = rig.start("trainer", ["tests.faults.faulty_trainer",
                                        "--set", f"stream_trainer.app:WATCHDOG_INTERVAL_S={interval_s}",
                                        "--", "run", "--config", str(config)])
        rig.wait_until(lambda: not missing_offsets(trained_counts(trained), ends), 180,
                       f"every message up to {ends} trained over SASL_SSL", alive=(trainer,))
        admin = AdminClient({"bootstrap.servers": secured.bootstrap})
        deletion = UserScramCredentialDeletion("running", ScramMechanism.SCRAM_SHA_512)
        for fut in admin.alter_user_scram_credentials([deletion]).values():
            fut.result(30)
        revoked_at = time.monotonic()
        # Two failed checks in a row (the second after RECHECK_S), then the final checkpoint and exit.
        bound = 2 * (interval_s + CONNECT_TIMEOUT_S) + preflight.RECHECK_S + EXIT_AFTER_STOP_S
        rig.wait_until(lambda: not trainer.alive, bound, "the trainer to stop after the revocation", interval_s=0.2)
        took = time.monotonic() - revoked_at
        rc = trainer.stop()
    finally:
        rig.stop_all()
    output = "".join(trainer.output)
    assert rc == 2, f"exit {rc}:\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
    errors = [line for line in output.splitlines() if line.startswith("stream-trainer: error: ")]
    assert len(errors) == 1, output[-3000:]
    assert "SASL authentication failed for user 'running' with SCRAM-SHA-512" in errors[0], errors[0]
    _assert_no_secret(rig.programs, _passwords(secured))
    final = latest_checkpoint(rig.checkpoint_dir)
    assert final is not None and final.positions == ends, final
    assert lock_is_free(rig.checkpoint_dir)
    print(f"revoked credential: exit 2 {took:.1f} s after the deletion (bound {bound:.0f} s): {errors[0]}")


def test_a_wrong_scram_password_is_one_line_exit_2(secured: LocalBroker, tmp_path: Path) -> None:
    kafka, fragment = _case(secured, tmp_path)["wrong_password_scram"]
    _assert_one_line_exit_2(secured, tmp_path, "wrong_password_scram", kafka, fragment)


def _topic_named(plaintext: str, name: str) -> None:
    admin = Cluster(KafkaConfig(bootstrap_servers=plaintext))
    try:
        admin.ensure_topics({name: 1})
    finally:
        admin.close()
