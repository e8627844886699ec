"""Load for the reliability checks: open-loop arrivals at a fixed rate (no coordinated omission: a slow answer
does not delay the next request) and a closed loop that finds the service's peak throughput.

Every request carries its own X-Request-ID, so a transport error can be matched against the server's log:
a request the log never saw was never accepted; one the log answered but the client never received was lost.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from tests.reliability.harness import Service

PROBLEM_JSON = "application/problem+json"
_MAX_IDLE_S = 2.0


@dataclass(frozen=True)
class Shot:
    """One request as the client saw it."""

    request_id: str
    sent_at: float  # monotonic
    seconds: float
    status: int  # 0: no HTTP answer (transport error)
    content_type: str
    error: str  # transport error type, "" when answered
    server_ms: float = 0.0  # the service's own total_ms for a 200 (from its handler's start)

    @property
    def clean_error(self) -> bool:
        """A 4xx/5xx answered as problem+json (what every error of this API must be)."""
        return self.status >= 400 and self.content_type == PROBLEM_JSON


class _Client:
    """A minimal HTTP/1.1 client over kept-alive asyncio streams (one request per connection at a time).

    Why not httpx: at 150 requests/s httpx used ~10 ms of CPU per request here, so on 2 shared cores the load
    generator, not the service, set the latency (its own event loop lagging by seconds). This costs a
    fraction of that, so the figures measure the service."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self._all: list[asyncio.StreamWriter] = []

    async def post(
        self, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], bytes]:
        # Connections idle longer than this are closed, never reused: uvicorn closes them after 5 s, and a
        # request sent as it does so is lost in transit (the keep-alive race), which would count against
        # the service here. The oldest are at the front.
        while self._idle and time.monotonic() - self._idle[0][2] > _MAX_IDLE_S:
            self._idle.pop(0)[1].close()
        if self._idle:
            reader, writer, _ = self._idle.pop()
        else:
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self._all.append(writer)
        try:
            lines = [f"POST {path} HTTP/1.1", f"Host: {self.host}", f"Content-Length: {len(body)}"]
            lines += [f"{name}: {value}" for name, value in headers.items()]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
            await writer.drain()
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            status = int(head[0].split(" ", 2)[1])
            answer = {}
            for line in head[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    answer[name.strip().lower()] = value.strip()
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


async def _shoot(client: _Client, body: bytes, shots: list[Shot], timeout: float) -> None:
    request_id = uuid.uuid4().hex
    headers = {"Content-Type": "image/png", "X-Request-ID": request_id}
    sent = time.monotonic()
    try:
        async with asyncio.timeout(timeout):
            status, answer, payload = await client.post("/v1/classify", body, headers)
        content_type, error = answer.get("content-type", ""), ""
        server_ms = float(json.loads(payload)["results"][0]["timing"]["total_ms"]) if status == 200 else 0.0
    except (
        OSError,
        asyncio.IncompleteReadError,
        asyncio.LimitOverrunError,
        TimeoutError,
        ValueError,
    ) as failure:
        status, content_type, error, server_ms = 0, "", type(failure).__name__, 0.0
    shots.append(Shot(request_id, sent, time.monotonic() - sent, status, content_type, error, server_ms))


async def open_loop(
    url: str, body: bytes, rate: float, duration_s: float, timeout: float = 30.0
) -> list[Shot]:
    """Send at `rate` requests/s for `duration_s` whatever the answers; wait for every answer."""
    shots: list[Shot] = []
    client = _Client(url)
    try:
        started = time.monotonic()
        tasks = []
        for index in range(int(rate * duration_s)):
            delay = started + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(_shoot(client, body, shots, timeout)))
        await asyncio.gather(*tasks)
    finally:
        await client.aclose()
    return shots


async def closed_loop(url: str, body: bytes, concurrency: int, duration_s: float) -> list[Shot]:
    """`concurrency` clients, each sending its next request as soon as the previous one is answered."""
    shots: list[Shot] = []
    client = _Client(url)
    until = time.monotonic() + duration_s

    async def user() -> None:
        while time.monotonic() < until:
            await _shoot(client, body, shots, 30.0)

    try:
        await asyncio.gather(*(user() for _ in range(concurrency)))
    finally:
        await client.aclose()
    return shots


def throughput(shots: list[Shot], status: int = 200) -> float:
    """Answers with `status` per second over the span the shots were sent and answered in."""
    chosen = [shot for shot in shots if shot.status == status]
    if not chosen:
        return 0.0
    first = min(shot.sent_at for shot in shots)
    last = max(shot.sent_at + shot.seconds for shot in shots)
    return len(chosen) / max(last - first, 1e-9)


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[min(998, int(fraction * 1000) - 1)]


def statuses(shots: list[Shot]) -> Counter[str]:
    return Counter(str(shot.status) if shot.status else f"transport:{shot.error}" for shot in shots)


@dataclass
class RssSampler:
    """The server's resident memory, sampled every `interval_s` from a thread while the block runs."""

    service: Service
    interval_s: float = 0.05
    samples: list[int] = field(default_factory=list)

    @property
    def max_mib(self) -> float:
        return max(self.samples, default=0) / 2**20

    @contextmanager
    def sampling(self) -> Iterator[RssSampler]:
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                self.samples.append(self.service.rss_bytes())
                stop.wait(self.interval_s)

        thread = threading.Thread(target=sample, name="rss-sampler", daemon=True)
        thread.start()
        try:
            yield self
        finally:
            stop.set()
            thread.join(5)
