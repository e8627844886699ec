"""The load generators' minimal HTTP/1.1 client against a real loopback server: Content-Length and chunked
bodies, keep-alive reuse, `Connection: close`, and a server that hangs up mid-answer."""

from __future__ import annotations

import asyncio

import pytest

from loadtest.httpclient import HttpClient


async def _serve(answers: list[bytes]) -> tuple[asyncio.Server, list[int]]:
    """A server that reads each request (head + Content-Length body) and writes the next canned answer;
    it records which connection (by order of arrival) served each request."""
    connections: list[int] = []
    seen = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal seen
        seen += 1
        connection = seen
        try:
            while answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
                await reader.readexactly(length)
                connections.append(connection)
                writer.write(answers.pop(0))
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, connections


def test_bodies_by_length_and_chunked_over_one_kept_alive_connection() -> None:
    async def scenario() -> None:
        answers = [
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbusy\r\n3\r\n!!!\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbye",
        ]
        server, connections = await _serve(answers)
        port = server.sockets[0].getsockname()[1]
        client = HttpClient(f"http://127.0.0.1:{port}")
        try:
            body = b"x" * 300_000  # larger than a socket buffer: written in pieces
            assert await client.post("/v1/classify", body, {"Content-Type": "image/png"}) == (
                200, {"content-type": "application/json", "content-length": "2"}, b"{}"
            )  # fmt: skip
            status, headers, payload = await client.post("/", b"y", {})
            assert (status, payload, headers["transfer-encoding"]) == (503, b"busy!!!", "chunked")
            assert (await client.post("/", b"z", {}))[2] == b"bye"
            assert connections == [1, 1, 1]  # one connection, kept alive until the server said close
        finally:
            await client.aclose()
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())


def test_a_server_that_hangs_up_mid_answer_raises_and_the_connection_is_not_reused() -> None:
    async def scenario() -> None:
        server, _ = await _serve([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"])
        port = server.sockets[0].getsockname()[1]
        client = HttpClient(f"http://127.0.0.1:{port}")
        try:
            with pytest.raises(asyncio.IncompleteReadError):
                await client.post("/", b"a", {})
            assert client._idle == []
        finally:
            await client.aclose()
            server.close()
            await server.wait_closed()

    asyncio.run(scenario())
