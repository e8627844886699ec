"""service.protocol on a real uvicorn server (loopback, free port): bodies arrive whole and intact, in
few ASGI messages, and SO_RCVLOWAT never outlives the body it was raised for."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from service.protocol import _set_rcvlowat, bulk_protocol

BIG = os.urandom(3 * 1024 * 1024 + 12345)


async def _app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Echoes the body's length, hash and the number of http.request messages it came in."""
    if scope["type"] != "http":
        return
    messages, parts, disconnected = 0, [], False
    if scope["path"] != "/refuse":  # /refuse answers before reading the body
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                disconnected = True
                break
            messages += 1
            parts.append(message.get("body", b""))
            more = message.get("more_body", False)
    body = b"".join(parts)
    answer = json.dumps(
        {
            "bytes": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
            "messages": messages,
            "disconnected": disconnected,
        }
    ).encode()
    status = 413 if scope["path"] == "/refuse" else 200
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(answer)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": answer})


@pytest.fixture(params=["bulk", "stock"])
def server(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    protocol = bulk_protocol() if request.param == "bulk" else "httptools"
    assert not isinstance(protocol, str) or request.param == "stock", "bulk protocol unavailable"
    config = uvicorn.Config(_app, host="127.0.0.1", port=0, http=protocol, loop="uvloop", log_level="warning")
    instance = uvicorn.Server(config)
    thread = threading.Thread(target=instance.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not instance.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    port = instance.servers[0].sockets[0].getsockname()[1]
    yield request.param, port
    instance.should_exit = True
    thread.join(timeout=10)


def _read_answer(conn: socket.socket) -> tuple[int, dict[str, Any]]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        assert chunk, "connection closed before the answer"
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    length = next(int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length"))
    while len(rest) < length:
        chunk = conn.recv(65536)
        assert chunk, "connection closed inside the answer"
        rest += chunk
    return int(lines[0].split()[1]), json.loads(rest[:length])


def _post(conn: socket.socket, path: str, body: bytes) -> None:
    conn.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)


def _connect(port: int) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port), timeout=10)  # a stalled read fails the test
    return conn


def test_large_body_arrives_intact_in_few_messages(server: tuple[str, int]) -> None:
    kind, port = server
    with _connect(port) as conn:
        for _ in range(3):  # kept alive: each body is read whole, then the next request is seen
            _post(conn, "/", BIG)
            status, answer = _read_answer(conn)
            assert status == 200
            assert answer["bytes"] == len(BIG)
            assert answer["sha256"] == hashlib.sha256(BIG).hexdigest()
            if kind == "bulk":
                assert answer["messages"] <= 4, answer  # woken for the body, not for every segment
            else:
                assert answer["messages"] >= 8, answer  # stock uvicorn: one per ~256 KiB read
        conn.sendall(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n")  # no body: SO_RCVLOWAT is back at 1
        status, answer = _read_answer(conn)
        assert (status, answer["bytes"]) == (200, 0)


def test_small_and_chunked_bodies(server: tuple[str, int]) -> None:
    _, port = server
    with _connect(port) as conn:
        _post(conn, "/", b"x" * 100)
        assert _read_answer(conn)[1]["bytes"] == 100
        chunked = (
            b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (BIG[:700_000], BIG[700_000:]))
            + b"0\r\n\r\n"
        )
        conn.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked)
        status, answer = _read_answer(conn)
        assert status == 200 and answer["sha256"] == hashlib.sha256(BIG).hexdigest()


def test_body_refused_unread_then_next_request_on_the_connection(server: tuple[str, int]) -> None:
    _, port = server
    with _connect(port) as conn:
        _post(conn, "/refuse", BIG)
        status, _ = _read_answer(conn)
        assert status == 413
        conn.sendall(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
        try:
            status, answer = _read_answer(conn)
        except AssertionError:
            return  # uvicorn may close a connection whose body it never handed on; it must not hang
        assert (status, answer["bytes"]) == (200, 0)


def test_short_body_then_hang_up_is_a_disconnect(server: tuple[str, int]) -> None:
    _, port = server
    with _connect(port) as conn:
        conn.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n" + BIG[:1_000_000])
        conn.shutdown(socket.SHUT_WR)  # FIN with 4 MB still owed: the loop must wake and see it
        conn.settimeout(10)
        assert conn.recv(1) in (b"", b"H")  # closed (or an error answer), never a hang
    with _connect(port) as conn:  # and the server still serves
        _post(conn, "/", b"ok")
        assert _read_answer(conn)[1]["bytes"] == 2


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_RCVLOWAT pacing is used on Linux only")
def test_rcvlowat_is_set_on_the_descriptor_itself() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        conn, _ = listener.accept()
        with client, conn:
            assert _set_rcvlowat(conn.fileno(), 1 << 20)
            assert conn.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1 << 20
            assert _set_rcvlowat(conn.fileno(), 1)
            assert conn.getsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT) == 1
    assert not _set_rcvlowat(conn.fileno(), 1 << 20)  # closed: refused, and the protocol stops trying
