"""librdkafka 1.5.0"s rules for the values of the properties tensorflow-io is given: the fallback.

``tfio_librdkafka`` asks the library itself; this table decides only where it cannot be asked.
Generated from tensorflow-io 0.37.1"s own librdkafka (``rd_kafka_conf_properties_show``, called
through ``tfio_librdkafka``"s symbol lookup), for the properties in ``properties.TFIO_PASSED``
that are numbers, booleans, enums or flag lists; strings take anything. How 1.5.0 parses each
kind and its error texts follow its ``rdkafka_conf.c``; tests/test_security.py checks that this
table and the library agree on values either side of every rule. Regenerate when tensorflow-io"s
librdkafka changes.
"""

from __future__ import annotations

import re

INTEGER = {
    "api.version.fallback.ms": (0, 604800000),
    "api.version.request.timeout.ms": (1, 300000),
    "auto.commit.interval.ms": (0, 86400000),
    "broker.address.ttl": (0, 86400000),
    "consume.callback.max.messages": (0, 1000000),
    "coordinator.query.interval.ms": (1, 3600000),
    "enabled_events": (0, 2147483647),
    "fetch.error.backoff.ms": (0, 300000),
    "fetch.max.bytes": (0, 2147483135),
    "fetch.message.max.bytes": (1, 1000000000),
    "fetch.min.bytes": (1, 100000000),
    "fetch.wait.max.ms": (0, 300000),
    "heartbeat.interval.ms": (1, 3600000),
    "internal.termination.signal": (0, 128),
    "log_level": (0, 7),
    "max.in.flight": (1, 1000000),
    "max.in.flight.requests.per.connection": (1, 1000000),
    "max.partition.fetch.bytes": (1, 1000000000),
    "max.poll.interval.ms": (1, 86400000),
    "message.copy.max.bytes": (0, 1000000000),
    "message.max.bytes": (1000, 1000000000),
    "metadata.max.age.ms": (1, 86400000),
    "metadata.request.timeout.ms": (10, 900000),
    "offset.store.sync.interval.ms": (-1, 86400000),
    "queued.max.messages.kbytes": (1, 2097151),
    "queued.min.messages": (1, 10000000),
    "receive.message.max.bytes": (1000, 2147483647),
    "reconnect.backoff.jitter.ms": (0, 3600000),
    "reconnect.backoff.max.ms": (0, 3600000),
    "reconnect.backoff.ms": (0, 3600000),
    "session.timeout.ms": (1, 3600000),
    "socket.blocking.max.ms": (1, 60000),
    "socket.max.fails": (0, 1000000),
    "socket.receive.buffer.bytes": (0, 100000000),
    "socket.send.buffer.bytes": (0, 100000000),
    "socket.timeout.ms": (10, 300000),
    "statistics.interval.ms": (0, 86400000),
    "topic.metadata.propagation.max.ms": (0, 3600000),
    "topic.metadata.refresh.fast.cnt": (0, 1000),
    "topic.metadata.refresh.fast.interval.ms": (1, 60000),
    "topic.metadata.refresh.interval.ms": (-1, 3600000),
}
BOOLEAN = frozenset({
    "allow.auto.create.topics", "api.version.request", "check.crcs", "enable.random.seed",
    "enable.sasl.oauthbearer.unsecure.jwt", "enable.ssl.certificate.verification", "log.connection.close",
    "log.queue", "log.thread.name", "socket.keepalive.enable", "socket.nagle.disable",
    "topic.metadata.refresh.sparse",
})
ENUM = {
    "broker.address.family": ("any", "v4", "v6"),
    "isolation.level": ("read_uncommitted", "read_committed"),
    "offset.store.method": ("none", "file", "broker"),
    "security.protocol": ("plaintext", "ssl", "sasl_plaintext", "sasl_ssl"),
    "ssl.endpoint.identification.algorithm": ("none", "https"),
}
FLAGS = {
    "builtin.features": ("gzip", "snappy", "ssl", "sasl", "regex", "lz4", "sasl_plain", "sasl_scram", "zstd",
                         "sasl_oauthbearer"),
    # No "conf": that context came with librdkafka 1.6.
    "debug": ("generic", "broker", "topic", "metadata", "feature", "queue", "msg", "protocol", "cgrp", "security",
              "fetch", "interceptor", "plugin", "consumer", "admin", "eos", "mock", "all"),
}

# Any string is taken by these: only the library knows (plugins are not built into 1.5.0 here).
REFUSED = {
    "plugin.library.paths": 'No such configuration property: "plugin.library.paths"',
    "interceptors": 'Internal property "interceptors" not settable',
}
# Aliases: 1.5.0 names the property they stand for in its messages.
ALIASES = {"max.in.flight": "max.in.flight.requests.per.connection",
           "max.partition.fetch.bytes": "fetch.message.max.bytes"}

# What C's strtol(value, &end, 0) reads: 1.5.0 takes a number's leading digits and ignores the rest.
_STRTOL = re.compile(r"\s*([+-]?)(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*)")


def strtol_as_int(value: str) -> int | None:
    """The C ``int`` 1.5.0 stores for ``value`` (strtol, base 0, then cast), or None if no digits lead it."""
    m = _STRTOL.match(value)
    if m is None:
        return None
    digits = m[2]
    base = 16 if digits[:2] in ("0x", "0X") else 8 if digits.startswith("0") else 10
    number = int(digits, base)
    number = -number if m[1] == "-" else number
    number = max(-(2**63), min(2**63 - 1, number))  # strtol saturates at the long's limits
    return (number + 2**31) % 2**32 - 2**31  # the cast to int keeps the low 32 bits


def _tokens(value: str) -> list[str]:
    return [t.lstrip() for t in value.split(",") if t.strip()]


def problem(key: str, value: str) -> str | None:
    """librdkafka 1.5.0's reason to refuse ``value`` for ``key`` (its own words), or None if it takes it."""
    if key in REFUSED:
        return REFUSED[key]
    name = ALIASES.get(key, key)
    if key in INTEGER:
        if not value:
            return f'Integer configuration property "{name}" cannot be set to empty value'
        number = strtol_as_int(value)
        if number is None:
            return f'Invalid value for configuration property "{name}"'
        low, high = INTEGER[key]
        if not low <= number <= high:
            return f'Configuration property "{name}" value {number} is outside allowed range {low}..{high}'
    elif key in BOOLEAN:
        if not value:
            return f'Bool configuration property "{name}" cannot be set to empty value'
        if value.lower() not in ("true", "t", "false", "f") and value not in ("1", "0"):
            return f'Expected bool value for "{name}": true or false'
    elif key in ENUM or key in FLAGS:
        if not value:
            return f'Configuration property "{name}" cannot be set to empty value'
        allowed = ENUM.get(key) or FLAGS[key]
        for token in _tokens(value) if key in FLAGS else [value.strip()]:
            if token.lower() not in allowed:
                return f'Invalid value "{token}" for configuration property "{name}"'
    return None


def examples(key: str) -> list[str]:
    """Values on both sides of ``key``'s rule (tests compare this table's verdicts with the library's)."""
    if key in INTEGER:
        low, high = INTEGER[key]
        return [str(low), str(high), str(low - 1), str(high + 1), "lots", "12MB", "0x10", "010", " 7", "+3", ""]
    if key in BOOLEAN:
        return ["true", "FALSE", "t", "F", "1", "0", "yes", "2", ""]
    if key in ENUM:
        return [*ENUM[key], ENUM[key][0].upper(), "nonsense", ""]
    if key in FLAGS:
        return [*FLAGS[key], ",".join(FLAGS[key][:3]), f"{FLAGS[key][0]}, {FLAGS[key][1]}", FLAGS[key][0].upper(),
                f"{FLAGS[key][0]},nonsense", "nonsense", ""]
    return ["anything"] if key in REFUSED else []
