"""A minimal HTTP/1.1 client over kept-alive asyncio streams, for load that must cost the server's cores little.

The load generators run on the machine they measure, so every millisecond of client CPU is taken from the
server. Measured at the service's peak with 2.5 MB JPEG bodies (user CPU per request): aiohttp 0.8-0.95 ms,
this client 0.2 ms (kernel time, ~0.55 ms, is the same for both); httpx used ~10 ms per request at 150/s.
It speaks just what the targets answer: a status line, headers, and a body by Content-Length or chunked.
"""

from __future__ import annotations

import asyncio
import time

MAX_IDLE_S = 2.0
"""Connections idle longer than this are closed, never reused: uvicorn closes them after 5 s, and a
request sent while it does so is lost in transit (the keep-alive race), which would count against the
server."""


class HttpClient:
    """POSTs to one host:port; one request per connection at a time, idle connections reused newest first."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split("/", 1)[0].split(":")
        self.host, self.port = host, int(port)
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self._all: list[asyncio.StreamWriter] = []

    async def post(
        self, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        """(status, lower-cased headers, body). Raises OSError, asyncio.IncompleteReadError or ValueError
        when the exchange fails; the connection is then closed, never reused."""
        while self._idle and time.monotonic() - self._idle[0][2] > MAX_IDLE_S:  # the oldest are in front
            self._idle.pop(0)[1].close()
        if self._idle:
            reader, writer, _ = self._idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self._all.append(writer)
        try:
            lines = [f"POST {path} HTTP/1.1", f"Host: {self.host}", f"Content-Length: {len(body)}"]
            lines += [f"{name}: {value}" for name, value in headers.items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            writer.write(body)  # not joined to the head: that would copy a multi-megabyte body once more
            await writer.drain()
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            status = int(head[0].split(" ", 2)[1])
            answer: dict[str, str] = {}
            for line in head[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    answer[name.strip().lower()] = value.strip()
            if answer.get("transfer-encoding", "").lower() == "chunked":
                payload = await _chunked(reader)
            else:
                payload = await reader.readexactly(int(answer.get("content-length", "0")))
        except BaseException:
            writer.close()
            raise
        if answer.get("connection", "").lower() == "close":
            writer.close()
        else:
            self._idle.append((reader, writer, time.monotonic()))
        return status, answer, payload

    async def aclose(self) -> None:
        for writer in self._all:
            writer.close()
        self._idle.clear()


async def _chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers from these targets: the empty line ends it
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)
