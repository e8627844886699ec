"""Who may open an association with us, and on what terms: the listener and the C-MOVE destination both
accept associations through `serve`.

- The called AE title must be ours, and the calling AE title one of `calling_aes`; anything else gets an
  A-ASSOCIATE-RJ (rejected-permanent, service-user, "called/calling AE title not recognised", PS3.8
  9.3.4) from pynetdicom's own check, and one log line here naming the peer (no patient data: nothing of a
  dataset is read before the association is accepted).
- A peer address outside `networks` (when given) is disconnected at TCP level before a byte of DICOM is
  read, with one log line.
- At most `max_associations` at once (beyond that: A-ASSOCIATE-RJ rejected-transient, "local limit
  exceeded"); TCP connections beyond twice that are closed at once, so idle sockets cannot pile up threads.
- Timeouts: `artim_timeout_s` (pynetdicom's acse_timeout: the ARTIM timer of PS3.8 9.1.5, which drops a
  peer that connects and never sends an A-ASSOCIATE-RQ or release), `idle_timeout_s` (network_timeout: an
  association with no PDU for that long is aborted; also the socket timeout, so a peer silent in the middle
  of a PDU or of the TLS handshake is dropped too) and `dimse_timeout_s`.
- TLS (PS3.15 B.1) when `ssl_context` is set. pynetdicom wraps an accepted socket in the thread that
  accepts connections, which would let one silent peer stall the handshake of everyone after it; here the
  handshake is done in the connection's own thread, under the socket timeout.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.transport import ThreadedAssociationServer

from pacs.uids import shown

logger = logging.getLogger(__name__)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Admission:
    """The terms of admission of one server (see the module docstring)."""

    ae_title: str
    calling_aes: tuple[str, ...]
    networks: tuple[Network, ...] = ()
    max_associations: int = 4
    max_pdu_bytes: int = 65536
    artim_timeout_s: float = 30.0
    idle_timeout_s: float = 60.0
    dimse_timeout_s: float = 30.0
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.calling_aes:
            raise ValueError("at least one calling AE title must be allowed")
        if self.max_associations < 1:
            raise ValueError("max_associations must be at least 1")

    def address_allowed(self, host: str) -> bool:
        if not self.networks:
            return True
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    def refusal(self, calling: str, called: str) -> str:
        """Why an association request from `calling` to `called` was rejected (for the log line)."""
        if calling.strip() not in self.calling_aes:
            return "calling AE title not recognised"
        if called.strip() != self.ae_title:
            return "called AE title not recognised"
        return "local limit exceeded (too many associations) or no acceptable context"

    def application_entity(self) -> AE:
        """A pynetdicom AE that enforces these terms (contexts are the caller's to add)."""
        ae = AE(ae_title=self.ae_title)
        ae.require_called_aet = True
        ae.require_calling_aet = list(self.calling_aes)
        ae.maximum_associations = self.max_associations
        ae.maximum_pdu_size = self.max_pdu_bytes
        ae.acse_timeout = self.artim_timeout_s
        ae.network_timeout = self.idle_timeout_s
        ae.dimse_timeout = self.dimse_timeout_s
        return ae


class _GuardedServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the address check, the connection cap, the socket timeout and the
    TLS handshake moved off the accepting thread (socketserver's public hooks)."""

    admission: Admission

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        listening = self.socket
        if listening is None:
            raise OSError("the server socket is closed")
        client, address = listening.accept()
        client.settimeout(self.admission.idle_timeout_s)
        if self.ssl_context is not None:
            client = self.ssl_context.wrap_socket(client, server_side=True, do_handshake_on_connect=False)
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        host = str(client_address[0])
        if not self.admission.address_allowed(host):
            logger.warning("%s: connection from %s refused (address not allowed)", self.ae_title, shown(host))
            return False
        if len(self.ae.active_associations) >= 2 * self.admission.max_associations:
            logger.warning("%s: connection from %s closed (too many connections)", self.ae_title, shown(host))
            return False
        return True

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.do_handshake()
            except (OSError, ValueError) as error:
                reason = getattr(error, "reason", None) or type(error).__name__
                logger.warning(
                    "%s: TLS handshake with %s failed (%s)", self.ae_title, shown(client_address[0]), reason
                )
                self.shutdown_request(request)
                return
        super().finish_request(request, client_address)

    def shutdown(self) -> None:
        """Stop accepting, close the socket, then abort the associations still open (pynetdicom's own
        shutdown expects a server `AE.start_server` made)."""
        socketserver.BaseServer.shutdown(self)
        self.server_close()
        for association in self.ae.active_associations:
            if association.is_acceptor:
                association.abort()


def serve(
    ae: AE,
    admission: Admission,
    address: tuple[str, int],
    handlers: Sequence[tuple[Any, Callable[..., Any]]],
    *,
    name: str = "dicom-acceptor",
) -> ThreadedAssociationServer:
    """Bind `address` and serve `ae` (made by `admission.application_entity()`) in a background thread;
    `shutdown()` on the result stops it."""

    def on_rejected(event: Any) -> None:
        requestor = event.assoc.requestor
        calling = str(requestor.ae_title)
        primitive = getattr(requestor, "primitive", None)
        called = str(getattr(primitive, "called_ae_title", ""))
        logger.warning(
            "%s: association from %s (calling %s, called %s) rejected: %s",
            admission.ae_title,
            shown(requestor.address),
            shown(calling.strip()),
            shown(called.strip()),
            admission.refusal(calling, called),
        )

    server = ae.make_server(
        address,
        ssl_context=admission.ssl_context,
        evt_handlers=[*handlers, (evt.EVT_REJECTED, on_rejected)],
        server_class=_GuardedServer,
    )
    if not isinstance(server, _GuardedServer):
        raise TypeError("pynetdicom did not make the server class asked for")
    server.admission = admission
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    return server
