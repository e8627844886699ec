"""uvicorn's httptools protocol, reading a large request body in bulk and copying it once.

A full-size X-ray arrives as a 2-4 MB body. Stock uvicorn pauses reading at 64 KiB of buffered body, so
every ~256 KiB read costs a round trip through the app's task (about ten per film), and it copies the
body twice more on the way (a growing bytearray, then bytes() of it). Here, for a body with a
Content-Length:
- the socket's SO_RCVLOWAT is raised to the bytes still expected (up to RCVLOWAT_CAP), so the event loop
  is woken when a large part of the body is there, not for every segment;
- up to BODY_HIGH_WATER bytes are buffered before reading pauses;
- the chunks are kept as they come and joined once when the app receives them.

The kernel caps SO_RCVLOWAT at half its largest receive buffer and still reports a socket readable on
FIN, reset or memory pressure, so a short or abandoned body cannot stall the loop; a chunked body, a
small one and everything after the body keep SO_RCVLOWAT at 1. Measured on 2 cores with 2.5 MB JPEGs
at 16 clients (docs/benchmarks.md, "Service settings", `--http-protocol stock`).

This subclasses uvicorn internals (`on_body`, `cycle.body`, `flow`), so `bulk_protocol()` checks that
they are there and falls back to the stock protocol, with a warning, on a uvicorn that changed them.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import socket
import sys
from typing import Any

import uvicorn

logger = logging.getLogger(__name__)

RCVLOWAT_CAP = 4 * 1024 * 1024
"""Most body bytes the kernel collects before waking the loop (it caps this lower on small buffers)."""

BODY_HIGH_WATER = 8 * 1024 * 1024
"""Body bytes buffered per connection before reading pauses (uvicorn's own limit is 64 KiB)."""


_LINUX = sys.platform.startswith("linux")
_libc = ctypes.CDLL(None, use_errno=True) if _LINUX else None


def _set_rcvlowat(fd: int, value: int) -> bool:
    """setsockopt(SO_RCVLOWAT) on the event loop's descriptor, without a Python socket object: uvloop's
    transport socket builds a new one on every setsockopt (2 % of the loop's time in a profile)."""
    if _libc is None:
        return False
    option = ctypes.c_int(value)
    done: int = _libc.setsockopt(
        fd, socket.SOL_SOCKET, socket.SO_RCVLOWAT, ctypes.byref(option), ctypes.sizeof(option)
    )
    return done == 0


class _Chunks:
    """The body received so far: appended without copying, joined once by bytes()."""

    __slots__ = ("parts", "size")

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.size = 0

    def __iadd__(self, chunk: bytes) -> _Chunks:
        self.parts.append(chunk)
        self.size += len(chunk)
        return self

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)


def bulk_protocol() -> type[asyncio.Protocol] | str:
    """The protocol class for uvicorn.Config(http=...), or "httptools" where uvicorn's internals differ."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
    except ImportError:  # no httptools: uvicorn's h11 protocol, untouched
        return "auto"
    needed = all(
        hasattr(HttpToolsProtocol, name) for name in ("on_body", "on_headers_complete", "data_received")
    )
    if not needed or "body" not in RequestResponseCycle.__init__.__code__.co_names:
        logger.warning(
            "uvicorn %s: unknown httptools protocol layout; using its stock protocol", uvicorn.__version__
        )
        return "httptools"

    class BulkBodyProtocol(HttpToolsProtocol):
        _fd = -1  # the TCP socket's descriptor, while SO_RCVLOWAT may be raised on it
        _remaining = 0
        _lowat = 1

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            sock = transport.get_extra_info("socket")
            # Only Linux TCP: a Unix socket ignores SO_RCVLOWAT in poll(), and other kernels size their
            # buffers differently, so there the body is read as uvicorn reads it.
            if _LINUX and sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
                self._fd = sock.fileno()

        def connection_lost(self, exc: Exception | None) -> None:
            self._fd = -1
            super().connection_lost(exc)

        def on_headers_complete(self) -> None:
            super().on_headers_complete()
            self._remaining = 0
            for name, value in self.headers:
                if name == b"content-length" and value.isdigit():
                    self._remaining = int(value)

        def on_body(self, body: bytes) -> None:
            self._remaining -= len(body)  # counted first: a refused body is still read off the socket
            cycle: Any = self.cycle  # its body becomes a _Chunks, which uvicorn's annotation does not know
            if (self.parser.should_upgrade() and self._should_upgrade()) or cycle.response_complete:
                return
            chunks = cycle.body
            if not isinstance(chunks, _Chunks):  # uvicorn's empty bytearray: a fresh cycle, or the app
                chunks = cycle.body = _Chunks()  # has just taken the body
            chunks += body
            if len(chunks) > BODY_HIGH_WATER:
                self.flow.pause_reading()
            cycle.message_event.set()

        def on_message_complete(self) -> None:
            self._remaining = 0
            super().on_message_complete()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            wanted = max(1, min(RCVLOWAT_CAP, self._remaining))
            if wanted != self._lowat and self._fd >= 0 and not self.transport.is_closing():
                if _set_rcvlowat(self._fd, wanted):
                    self._lowat = wanted
                else:  # not settable on this socket: read as uvicorn does
                    self._fd = -1

    return BulkBodyProtocol
