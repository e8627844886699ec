"""An async HTTP load generator for the benchmark: closed loop (N clients back to back) and open loop
(requests fired at fixed times, whatever the server does).

Why both: a closed loop finds the peak throughput, but each client waits for its answer, so a slow server
also slows the arrivals and its latency looks better than a user would see (coordinated omission). The
open loop schedules request i at `start + i / rate` and measures its latency from that *scheduled* time,
so time spent waiting behind a stalled server counts.

Every answer is checked (loadtest/checks.py); only correct classifications count as throughput and feed
the latency percentiles, errors are counted by kind.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loadtest.checks import check_answer
from loadtest.httpclient import HttpClient
from loadtest.images import Sample

MAX_IN_FLIGHT = 4096
"""Open loop: requests outstanding at once before the generator counts new ones as dropped (bounds the
generator's own memory when a target stops answering)."""


@dataclass(frozen=True)
class Request:
    """What a target receives: its URL, and whether it answers with the service's full schema."""

    url: str
    full_check: bool = True
    positive_label: str = "covid"


@dataclass
class Outcome:
    scheduled: float  # monotonic time the request was due (open loop) or sent (closed loop)
    sent: float
    done: float
    status: int  # 0: no HTTP answer (connection error, client timeout)
    error: str | None  # None: a correct classification


@dataclass
class Summary:
    """One load level of one target, as it goes into results.json and the tables."""

    target: str
    mode: str  # "closed" (level = clients) or "open" (level = requests per second)
    level: float
    duration_s: float
    requests: int
    ok: int
    images_per_s: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    error_rate: float
    statuses: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    max_total_s: float = 0.0  # longest time from send to answer of any request, failed ones included
    cpu_ms: dict[str, float] = field(default_factory=dict)  # CPU per request by part (service, closed loop)
    load_1min: float = 0.0  # the machine's 1-minute load average when the level ended
    repeat: bool = False  # closed loop: the best level measured again (the peak is the best of them)
    paired_limit: float | None = None  # service repeats: the in-process limit measured next to it, images/s
    paired_defaults: float | None = None  # service variants: the defaults measured next to it, images/s

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


def summarise(
    target: str, mode: str, level: float, outcomes: list[Outcome], window: tuple[float, float]
) -> Summary:
    """Requests answered inside `window` (monotonic start, end); latency from the scheduled time."""
    start, end = window
    counted = [o for o in outcomes if start <= o.done <= end]
    good = [o for o in counted if o.error is None]
    latencies = np.array([(o.done - o.scheduled) * 1000.0 for o in good])

    def percentile(q: float) -> float | None:
        return float(np.percentile(latencies, q)) if len(latencies) else None

    errors = Counter(o.error for o in counted if o.error is not None)
    return Summary(
        target=target,
        mode=mode,
        level=level,
        duration_s=end - start,
        requests=len(counted),
        ok=len(good),
        images_per_s=len(good) / (end - start),
        p50_ms=percentile(50),
        p95_ms=percentile(95),
        p99_ms=percentile(99),
        max_ms=float(latencies.max()) if len(latencies) else None,
        error_rate=(len(counted) - len(good)) / len(counted) if counted else 0.0,
        statuses=dict(sorted(Counter(str(o.status) for o in counted).items())),
        errors=dict(errors.most_common(8)),
        max_total_s=max((o.done - o.sent for o in outcomes), default=0.0),
        load_1min=os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0,
    )


class LoadGenerator:
    """Sends the samples round-robin to one target over kept-alive connections (loadtest.httpclient: the
    generator shares the cores with the target, so it must cost little)."""

    def __init__(self, request: Request, samples: list[Sample], *, timeout_s: float) -> None:
        if not samples:
            raise ValueError("no samples to send")
        self.request = request
        self.samples = samples
        self.timeout_s = timeout_s
        self._next = 0
        self._path = "/" + request.url.removeprefix("http://").partition("/")[2]

    def _sample(self) -> Sample:
        sample = self.samples[self._next % len(self.samples)]
        self._next += 1
        return sample

    async def _send(self, client: HttpClient, scheduled: float) -> Outcome:
        sample = self._sample()
        sent = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout_s):
                status, _, body = await client.post(self._path, sample.data, sample.headers)
        except (
            OSError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
            TimeoutError,
        ) as error:
            return Outcome(scheduled, sent, time.monotonic(), 0, f"no answer: {type(error).__name__}")
        done = time.monotonic()
        problem = check_answer(
            status, body, 1, positive_label=self.request.positive_label, full=self.request.full_check
        )
        return Outcome(scheduled, sent, done, status, problem)

    async def closed(
        self, clients: int, *, warmup_s: float, duration_s: float
    ) -> tuple[list[Outcome], tuple[float, float]]:
        """`clients` loops, each sending its next request when the previous one is answered."""
        outcomes: list[Outcome] = []
        start = time.monotonic()
        window = (start + warmup_s, start + warmup_s + duration_s)
        client = HttpClient(self.request.url)

        async def loop() -> None:
            while time.monotonic() < window[1]:
                outcomes.append(await self._send(client, time.monotonic()))

        try:
            await asyncio.gather(*(loop() for _ in range(clients)))
        finally:
            await client.aclose()
        return outcomes, window

    async def open(
        self, rate: float, *, warmup_s: float, duration_s: float
    ) -> tuple[list[Outcome], tuple[float, float]]:
        """Request i at `start + i / rate`; then waits for the stragglers (up to the client timeout). Each
        request takes an idle connection or opens one: nothing queues inside the client, which would hide
        server latency."""
        if rate <= 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        outcomes: list[Outcome] = []
        tasks: set[asyncio.Task[None]] = set()
        start = time.monotonic() + 0.05
        window = (start + warmup_s, start + warmup_s + duration_s)
        total = int((warmup_s + duration_s) * rate)
        client = HttpClient(self.request.url)

        async def one(scheduled: float) -> None:
            outcomes.append(await self._send(client, scheduled))

        try:
            for index in range(total):
                scheduled = start + index / rate
                delay = scheduled - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                if len(tasks) >= MAX_IN_FLIGHT:
                    now = time.monotonic()
                    outcomes.append(Outcome(scheduled, now, now, 0, "dropped by the generator"))
                    continue
                task = asyncio.get_running_loop().create_task(one(scheduled))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks)
        finally:
            await client.aclose()
        return outcomes, window
