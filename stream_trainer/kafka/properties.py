"""Which librdkafka properties each of our two librdkafkas knows, sorted by what tfio does with them.

Source: ``CONFIGURATION.md`` of librdkafka at tag v1.5.0 (the library inside tensorflow-io
0.37.1) and at v2.15 (confluent-kafka 2.16's generation). Every property of the v1.5.0 global and
topic tables is in exactly one set below; ``security.tfio_properties`` explains the rule.
Regenerate when tensorflow-io's librdkafka changes, never by guessing.
"""

from __future__ import annotations

# Global ("*") and consumer ("C") properties of v1.5.0 that are plain text settings: passed to tfio.
# Topic-level consumer properties are included: tfio sets its global list on a conf object whose
# default topic conf receives the topic-level ones (librdkafka's documented fall-through).
TFIO_PASSED = frozenset({
    "allow.auto.create.topics", "api.version.fallback.ms", "api.version.request", "api.version.request.timeout.ms",
    "auto.commit.interval.ms", "broker.address.family", "broker.address.ttl", "broker.version.fallback",
    "builtin.features", "check.crcs", "client.id", "client.rack", "consume.callback.max.messages",
    "coordinator.query.interval.ms", "debug", "enable.random.seed", "enable.sasl.oauthbearer.unsecure.jwt",
    "enable.ssl.certificate.verification", "enabled_events", "fetch.error.backoff.ms", "fetch.max.bytes",
    "fetch.message.max.bytes", "fetch.min.bytes", "fetch.wait.max.ms", "group.instance.id", "group.protocol.type",
    "heartbeat.interval.ms", "interceptors", "internal.termination.signal", "isolation.level",
    "log.connection.close", "log.queue", "log.thread.name", "log_level", "max.in.flight",
    "max.in.flight.requests.per.connection", "max.partition.fetch.bytes", "max.poll.interval.ms",
    "message.copy.max.bytes", "message.max.bytes", "metadata.max.age.ms", "metadata.request.timeout.ms",
    "offset.store.method", "offset.store.path", "offset.store.sync.interval.ms", "partition.assignment.strategy",
    "plugin.library.paths", "queued.max.messages.kbytes", "queued.min.messages", "receive.message.max.bytes",
    "reconnect.backoff.jitter.ms", "reconnect.backoff.max.ms", "reconnect.backoff.ms", "sasl.mechanism",
    "sasl.mechanisms", "sasl.oauthbearer.config", "sasl.password", "sasl.username", "security.protocol",
    "session.timeout.ms", "socket.blocking.max.ms", "socket.keepalive.enable", "socket.max.fails",
    "socket.nagle.disable", "socket.receive.buffer.bytes", "socket.send.buffer.bytes", "socket.timeout.ms",
    "ssl.ca.location", "ssl.certificate.location", "ssl.certificate.pem", "ssl.cipher.suites", "ssl.crl.location",
    "ssl.curves.list", "ssl.endpoint.identification.algorithm", "ssl.key.location", "ssl.key.password",
    "ssl.key.pem", "ssl.keystore.location", "ssl.keystore.password", "ssl.sigalgs.list", "statistics.interval.ms",
    "topic.blacklist", "topic.metadata.propagation.max.ms", "topic.metadata.refresh.fast.cnt",
    "topic.metadata.refresh.fast.interval.ms", "topic.metadata.refresh.interval.ms",
    "topic.metadata.refresh.sparse",
})

# Producer ("P") properties of v1.5.0 (global and topic): meaningless for tfio's consumer.
PRODUCER_ONLY = frozenset({
    "acks", "batch.num.messages", "batch.size", "compression.codec", "compression.level", "compression.type",
    "delivery.report.only.error", "delivery.timeout.ms", "enable.gapless.guarantee", "enable.idempotence",
    "linger.ms", "message.send.max.retries", "message.timeout.ms", "partitioner", "produce.offset.report",
    "queue.buffering.backpressure.threshold", "queue.buffering.max.kbytes", "queue.buffering.max.messages",
    "queue.buffering.max.ms", "queuing.strategy", "request.required.acks", "request.timeout.ms", "retries",
    "retry.backoff.ms", "transaction.timeout.ms", "transactional.id",
    "sticky.partitioning.linger.ms",  # producer property newer than v1.5.0
})

# Callbacks and pointers (both versions): code, not settings; a YAML string cannot be one.
CALLBACKS = frozenset({
    "background_event_cb", "closesocket_cb", "connect_cb", "consume_cb", "default_topic_conf", "dr_cb",
    "dr_msg_cb", "error_cb", "log_cb", "msg_order_cmp", "oauthbearer_token_refresh_cb", "offset_commit_cb",
    "opaque", "open_cb", "partitioner_cb", "rebalance_cb", "resolve_cb", "socket_cb",
    "ssl.certificate.verify_cb", "ssl_ca", "ssl_certificate", "ssl_engine_callback_data", "ssl_key", "stats_cb",
    "throttle_cb",
    # confluent-kafka's Python-level callbacks
    "logger", "oauth_cb", "on_commit", "on_delivery",
})

# Set by stream-trainer itself on every client; the value names the setting to use instead.
OWNED = {
    "bootstrap.servers": "kafka.bootstrap_servers",
    "metadata.broker.list": "kafka.bootstrap_servers",
    "group.id": "trainer.source.group_id",
    "auto.offset.reset": "trainer.source.auto_offset_reset",
    "enable.auto.commit": "nothing: the trainer commits after training, never librdkafka",
    "auto.commit.enable": "nothing: the trainer commits after training, never librdkafka",
    "enable.auto.offset.store": "nothing: the trainer tracks offsets itself",
    "enable.partition.eof": "nothing: each client sets what it needs",
}

# Kerberos settings: tensorflow-io's librdkafka is built without GSSAPI.
KERBEROS = frozenset({
    "sasl.kerberos.keytab", "sasl.kerberos.kinit.cmd", "sasl.kerberos.min.time.before.relogin",
    "sasl.kerberos.principal", "sasl.kerberos.service.name",
})

# Newer than v1.5.0, and only ever used by a group member, a share consumer or client telemetry:
# tfio joins no group and has no telemetry, so nothing is lost by leaving them out.
NEWER_GROUP_ONLY = frozenset({
    "group.protocol", "group.remote.assignor", "max.poll.records", "share.acknowledgement.mode",
    "enable.metrics.push",
})

# Newer than v1.5.0 connection tuning: without them tfio keeps v1.5.0's fixed behaviour (no
# connect timeout apart from socket.timeout.ms, no idle close, no re-bootstrap, no retry cap).
# Timing differs; what is read and how it is secured does not.
NEWER_TUNING = frozenset({
    "connections.max.idle.ms", "fetch.queue.backoff.ms", "metadata.recovery.rebootstrap.trigger.ms",
    "metadata.recovery.strategy", "retry.backoff.max.ms", "socket.connection.setup.timeout.ms",
})

# Newer than v1.5.0 with a value that matches what v1.5.0 always does: skipped with that value,
# refused with any other (the key -> the one value v1.5.0 honours).
NEWER_DEFAULT_ONLY = {
    "client.dns.lookup": "use_all_dns_ips",
    "sasl.oauthbearer.method": "default",
}

# Newer than v1.5.0 and about identity, trust or where to connect: cannot be honoured; a hint
# says what works instead, where something does.
NEWER_UNSUPPORTED = {
    "ssl.ca.pem": "put the CA certificate in a file and set ssl.ca.location",
    "ssl.ca.certificate.stores": "set ssl.ca.location",
    "ssl.engine.id": "", "ssl.engine.location": "", "ssl.providers": "",
    "https.ca.location": "", "https.ca.pem": "",
    **{f"sasl.oauthbearer.{k}": "OAUTHBEARER with an OIDC token endpoint needs librdkafka 1.9+" for k in (
        "assertion.algorithm", "assertion.claim.aud", "assertion.claim.exp.seconds", "assertion.claim.iss",
        "assertion.claim.jti.include", "assertion.claim.nbf.seconds", "assertion.claim.sub", "assertion.file",
        "assertion.jwt.template.file", "assertion.private.key.file", "assertion.private.key.passphrase",
        "assertion.private.key.pem", "client.credentials.client.id", "client.credentials.client.secret",
        "client.id", "client.secret", "extensions", "grant.type", "metadata.authentication.type", "scope",
        "sub.claim.name", "token.endpoint.url")},
}
