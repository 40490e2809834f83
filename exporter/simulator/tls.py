"""HTTPS for the simulated API server: its certificate and, optionally, client certificates
verified in the handshake, as the real server's `--client-ca-file` does."""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ServerTls:
    """Serve https with `cert_file` and `key_file` (PEM).

    With `client_ca_file`, a client certificate signed by that CA is verified in the handshake
    and authenticates its subject's common name as a user, as the real server's x509
    authenticator does; one signed by another CA fails the handshake. A client may still come
    without one and use a bearer token, unless `require_client_cert`, which fails every
    handshake without a valid client certificate."""

    cert_file: str | os.PathLike[str]
    key_file: str | os.PathLike[str]
    client_ca_file: str | os.PathLike[str] | None = None
    require_client_cert: bool = False

    def __post_init__(self) -> None:
        if self.require_client_cert and self.client_ca_file is None:
            raise ValueError("require_client_cert needs a client_ca_file to verify them with")

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        if self.client_ca_file is not None:
            context.load_verify_locations(cafile=os.fspath(self.client_ca_file))
            context.verify_mode = (
                ssl.CERT_REQUIRED if self.require_client_cert else ssl.CERT_OPTIONAL
            )
        return context


def client_certificate_user(peercert: Any) -> str | None:
    """The common name of a verified client certificate (`SSLObject.getpeercert()`), or None.

    Python's ssl returns the certificate's fields only once the handshake verified it against
    the client CA, so a name here is an authenticated one."""
    if not isinstance(peercert, dict):
        return None
    for rdn in peercert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and value:
                return str(value)
    return None
