"""A throw-away certificate authority and broker certificate, made with ``openssl`` when needed.

No key or certificate is checked in: every test run makes its own, valid for two days. The
broker's certificate names only the addresses it is given (``127.0.0.1`` by default), so a
client that reaches the same broker as ``localhost`` sees a hostname mismatch; that is how the
tests provoke one without a second broker.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass
from ipaddress import ip_address
from pathlib import Path

from stream_trainer.errors import BrokerStartError
from stream_trainer.workbench import broker as package

DAYS = "2"


@dataclass(frozen=True)
class TlsFiles:
    """What a TLS listener needs (a PKCS#12 keystore) and what its clients trust (the CA)."""

    ca_cert: Path  # PEM; clients pass it as ssl.ca.location
    keystore: Path  # PKCS#12: the broker's key and certificate chain
    keystore_password: str


def _openssl(*args: str, env: dict[str, str] | None = None) -> None:
    openssl = package.require_tool("openssl", "install OpenSSL, e.g. 'apt-get install openssl'")
    proc = subprocess.run([openssl, *args], capture_output=True, text=True, check=False,
                          env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        msg = f"openssl {args[0]} failed: {(proc.stdout + proc.stderr).strip()[-1000:]}"
        raise BrokerStartError(msg)


def make_ca(directory: Path, name: str = "stream-trainer test CA") -> tuple[Path, Path]:
    """A self-signed CA in ``directory``; returns (certificate, key) paths."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "ca.crt", directory / "ca.key"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
             "-days", DAYS, "-subj", f"/CN={name}",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def _san(hosts: tuple[str, ...]) -> str:
    entries = []
    for host in hosts:
        try:
            ip_address(host)
            entries.append(f"IP:{host}")
        except ValueError:
            entries.append(f"DNS:{host}")
    return ",".join(entries)


def make_tls_files(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1",)) -> TlsFiles:
    """A CA and a broker certificate it signed for ``hosts``, packed as a PKCS#12 keystore.

    The subject's CN is deliberately not a host name: OpenSSL falls back to the CN when a
    certificate has no DNS names, which would let ``localhost`` match by accident.
    """
    ca_cert, ca_key = make_ca(directory / "ca")
    key, csr, cert = directory / "broker.key", directory / "broker.csr", directory / "broker.crt"
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
             "-subj", "/CN=stream-trainer test broker")
    extensions = directory / "broker.ext"
    extensions.write_text(f"subjectAltName={_san(hosts)}\nbasicConstraints=CA:FALSE\n"
                          "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key), "-CAcreateserial",
             "-out", str(cert), "-days", DAYS, "-sha256", "-extfile", str(extensions))
    password = secrets.token_urlsafe(18)
    keystore = directory / "broker.p12"
    # The password travels in the environment, not argv: argv is visible to every user in ps.
    _openssl("pkcs12", "-export", "-in", str(cert), "-inkey", str(key), "-certfile", str(ca_cert),
             "-name", "broker", "-out", str(keystore), "-passout", "env:KEYSTORE_PASSWORD",
             env={"KEYSTORE_PASSWORD": password})
    key.unlink()  # the keystore holds it now
    return TlsFiles(ca_cert=ca_cert, keystore=keystore, keystore_password=password)
