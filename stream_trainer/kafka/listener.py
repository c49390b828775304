"""What a Kafka listener speaks and which certificate it shows, asked directly with Python's ``ssl``.

librdkafka reports an untrusted CA and a hostname mismatch alike ("certificate verify failed"),
and a plaintext client against a TLS listener only as disconnects. One TLS handshake of our own
tells these apart, so ``preflight`` can name the problem instead of guessing.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

from stream_trainer.config import KafkaConfig
from stream_trainer.errors import AuthenticationError, BrokerUnavailableError


def protocol(kafka: KafkaConfig) -> str:
    """``kafka.client``'s security.protocol, lower case (librdkafka's default: plaintext)."""
    return kafka.client.get("security.protocol", "plaintext").strip().lower()


def addresses(servers: str) -> list[tuple[str, int]]:
    """(host, port) of each entry of a bootstrap list ("h:p,h2:p2", "[::1]:p", "sasl_ssl://h:p")."""
    out = []
    for entry in servers.split(","):
        entry = entry.strip().split("://")[-1]
        host, _, port = entry.rpartition(":")
        if host and port.isdigit():
            out.append((host.strip("[]"), int(port)))
    return out


def _tls_context(kafka: KafkaConfig, verify: bool, check_hostname: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = check_hostname
    ctx.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
    if verify:
        ca = kafka.client.get("ssl.ca.location", "")
        if ca and Path(ca).is_file():
            ctx.load_verify_locations(cafile=ca)
        elif ca and Path(ca).is_dir():
            ctx.load_verify_locations(capath=ca)
        else:
            ctx.load_default_certs()
    cert, key = kafka.client.get("ssl.certificate.location"), kafka.client.get("ssl.key.location")
    if cert and key:
        ctx.load_cert_chain(cert, key, password=kafka.client.get("ssl.key.password"))
    return ctx


def _handshake(host: str, port: int, ctx: ssl.SSLContext, timeout_s: float) -> Exception | None:
    """None if a TLS handshake with ``ctx`` succeeds; the exception otherwise (OSError: no TCP)."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock, \
                ctx.wrap_socket(sock, server_hostname=host):
            return None
    except (OSError, ssl.SSLError, ValueError) as exc:
        return exc


def tcp_open(host: str, port: int, timeout_s: float) -> bool:
    """True if something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def diagnose(kafka: KafkaConfig, host: str, port: int, timeout_s: float) -> BrokerUnavailableError | None:
    """Name a TLS or protocol problem at one listener, or None when it shows none (or is unreachable)."""
    where = f"{host}:{port}"
    proto = protocol(kafka)
    if not tcp_open(host, port, timeout_s):
        return None
    speaks_tls = _handshake(host, port, _tls_context(kafka, verify=False, check_hostname=False), timeout_s) is None
    if proto in {"plaintext", "sasl_plaintext"}:
        if speaks_tls:
            msg = (f"the listener at {where} speaks TLS but kafka.client.security.protocol is {proto.upper()}; "
                   f"set it to {'SASL_SSL' if proto == 'sasl_plaintext' else 'SSL or SASL_SSL'} and "
                   f"kafka.client.ssl.ca.location to the CA that signed the broker's certificate")
            return AuthenticationError(msg)
        return None
    if not speaks_tls:
        msg = (f"the listener at {where} does not speak TLS but kafka.client.security.protocol is "
               f"{proto.upper()}; use the broker's TLS listener in kafka.bootstrap_servers or set "
               f"security.protocol to {'SASL_PLAINTEXT' if proto == 'sasl_ssl' else 'PLAINTEXT'}")
        return AuthenticationError(msg)
    if kafka.client.get("enable.ssl.certificate.verification", "true").strip().lower() == "false":
        return None
    chain = _handshake(host, port, _tls_context(kafka, verify=True, check_hostname=False), timeout_s)
    if isinstance(chain, ssl.SSLCertVerificationError):
        msg = (f"TLS: the certificate of the broker at {where} is not trusted by the configured CA "
               f"({chain.verify_message}); set kafka.client.ssl.ca.location to the CA certificate that signed it")
        return AuthenticationError(msg)
    if kafka.client.get("ssl.endpoint.identification.algorithm", "https").strip().lower() == "none":
        return None
    name = _handshake(host, port, _tls_context(kafka, verify=True, check_hostname=True), timeout_s)
    if isinstance(name, ssl.SSLCertVerificationError):
        msg = (f"TLS hostname mismatch: the certificate of the broker at {where} is not valid for the name "
               f"'{host}' ({name.verify_message}); connect with a name the certificate lists "
               f"(kafka.bootstrap_servers, the brokers' advertised.listeners) or reissue the certificate")
        return AuthenticationError(msg)
    return None
