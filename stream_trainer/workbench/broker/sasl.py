"""A ``SASL_SSL`` listener for the local broker: TLS files, users, and the properties that tie them.

Each user can log in with SCRAM-SHA-512 (credentials written into the cluster metadata at format
time, ``StorageTool format --add-scram``, as KRaft requires) and with PLAIN (a JAAS entry on the
listener). Broker-to-broker and controller traffic stays on the PLAINTEXT listeners: they are
bound to 127.0.0.1 and what the tests exercise is the client side.

With ``acls=True`` the cluster runs KRaft's StandardAuthorizer. The PLAINTEXT listener's
``User:ANONYMOUS`` is then a super user (the other nodes and the tests' own set-up talk through
it), while every SASL user needs ACLs, exactly as on a production cluster.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from stream_trainer.workbench.broker.tls import TlsFiles, make_tls_files

LISTENER = "SASL_SSL"
MECHANISMS = ("SCRAM-SHA-512", "PLAIN")


def new_password() -> str:
    # URL-safe base64 has no '=' (tensorflow-io rejects it), no quote and no comma, so it needs no
    # escaping in a JAAS entry or a --add-scram argument.
    return secrets.token_urlsafe(18)


@dataclass(frozen=True)
class SaslSsl:
    """The users and TLS files of one SASL_SSL listener."""

    tls: TlsFiles
    users: dict[str, str]  # name -> password
    acls: bool = False

    @classmethod
    def create(cls, directory: Path, users: Iterable[str] = ("trainer", "producer"), acls: bool = False,
               hosts: tuple[str, ...] = ("127.0.0.1",)) -> SaslSsl:
        """Fresh TLS files in ``directory`` and a random password per user."""
        return cls(make_tls_files(directory, hosts), {u: new_password() for u in users}, acls)

    def broker_properties(self) -> dict[str, str]:
        """The listener's security settings (the listener itself is added by the cluster)."""
        prefix = f"listener.name.{LISTENER.lower()}"
        plain_users = " ".join(f'user_{name}="{pw}"' for name, pw in self.users.items())
        props = {
            "sasl.enabled.mechanisms": ",".join(MECHANISMS),
            f"{prefix}.plain.sasl.jaas.config":
                f"org.apache.kafka.common.security.plain.PlainLoginModule required {plain_users};",
            f"{prefix}.scram-sha-512.sasl.jaas.config":
                "org.apache.kafka.common.security.scram.ScramLoginModule required;",
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(self.tls.keystore),
            "ssl.keystore.password": self.tls.keystore_password,
            "ssl.key.password": self.tls.keystore_password,
        }
        if self.acls:
            props["authorizer.class.name"] = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
            props["super.users"] = "User:ANONYMOUS"
        return props

    def format_arguments(self) -> list[str]:
        """``StorageTool format`` arguments that create every user's SCRAM-SHA-512 credential."""
        args: list[str] = []
        for name, pw in self.users.items():
            args += ["--add-scram", f"SCRAM-SHA-512=[name={name},password={pw}]"]
        return args

    def client(self, user: str, mechanism: str = "SCRAM-SHA-512", password: str | None = None) -> dict[str, str]:
        """``kafka.client`` settings for ``user``: what an operator writes into the YAML."""
        return {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": mechanism,
            "sasl.username": user,
            "sasl.password": self.users[user] if password is None else password,
            "ssl.ca.location": str(self.tls.ca_cert),
        }
