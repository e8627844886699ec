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

from loadtest.httpclient import HttpClient
from tests.reliability.harness import Service

PROBLEM_JSON = "application/problem+json"


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


async def _shoot(client: HttpClient, body: bytes, shots: list[Shot], timeout: float) -> None:
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
    client = HttpClient(url)
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
    client = HttpClient(url)
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
