"""DICOM TLS (PS3.15 Annex B.1, the TLS Secure Transport Connection Profile) as `ssl.SSLContext`s for
pynetdicom: the listener's and the C-MOVE destination's (`start_server(ssl_context=...)`) and the DIMSE
client's (`associate(tls_args=(context, hostname))`).

TLS 1.2 at least (PS3.15 B.1.1 and BCP 195); the peer's certificate is verified against the CA bundle
given (the system's when none is); the client checks the PACS's host name. A server asked to require client
certificates refuses a peer without one the CA bundle vouches for, in the TLS handshake, before any DICOM
is read.
"""

from __future__ import annotations

import ssl
from pathlib import Path


def server_context(
    certificate: Path, key: Path, ca_bundle: Path | None, *, require_client_certificate: bool
) -> ssl.SSLContext:
    """The context a DICOM server (listener, C-MOVE destination) accepts TLS associations with."""
    if require_client_certificate and ca_bundle is None:
        raise ValueError("requiring client certificates needs a CA bundle to verify them with")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=certificate, keyfile=key)
    if ca_bundle is not None:
        context.load_verify_locations(cafile=ca_bundle)
    context.verify_mode = ssl.CERT_REQUIRED if require_client_certificate else ssl.CERT_NONE
    return context


def client_context(
    ca_bundle: Path | None, certificate: Path | None = None, key: Path | None = None
) -> ssl.SSLContext:
    """The context the DIMSE client opens TLS associations with: the PACS's certificate verified (host name
    included), ours presented when given (a PACS that requires client certificates needs it)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_bundle)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if certificate is not None:
        context.load_cert_chain(certfile=certificate, keyfile=key)
    return context
