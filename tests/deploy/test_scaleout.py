"""Scale-out without containers: two real `cxr serve` replicas behind a real nginx running deploy/nginx.conf,
concurrent classify requests through nginx, and one replica stopped mid-load.

SIGTERM: the replica drains (what it had queued finishes, new work is refused with 503 or a closed
socket) and nginx sends what it refused to the other replica. SIGKILL: requests die with the process and
nginx resends them (classification is idempotent, so `non_idempotent` retries are allowed). Either way no
client sees a failure.
"""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.deploy.balancer import (
    Process,
    access_log,
    nginx_binary,
    start_nginx,
    start_replica,
    wait_for_replica,
    wait_for_status,
)
from tests.support.tinymodel import blob_image, encode, make_tiny_model

NGINX = nginx_binary()
pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(180),
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx; .ci/run does)"),
]

TOTAL_REQUESTS = 240
CONCURRENCY = 12
STOP_AFTER = 80  # responses received before the replica is stopped
BATCH_DELAY_S = 0.03  # every batch sleeps this long, so each replica has work in flight at any moment
DRAIN_TIMEOUT_S = 10.0
IMAGES = [
    encode(blob_image((64, 64), centre=centre, seed=seed)) for seed, centre in enumerate([None, (0.5, 0.5)])
]


@dataclass
class Outcome:
    request_id: str
    image: int
    started: float
    finished: float
    status: int
    covid: float | None


@dataclass
class Stack:
    replicas: list[Process]
    nginx: Process


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    assert NGINX is not None
    model_dir = tmp_path / "models"
    make_tiny_model(model_dir)
    flags = ("--max-batch-size", "8", "--max-queue-delay-ms", "5", "--drain-timeout-s", str(DRAIN_TIMEOUT_S))
    flags += ("--intra-op-threads", "1", "--decode-workers", "1")
    started: list[Process] = []
    try:
        for name in ("a", "b"):
            started.append(
                start_replica(
                    model_dir, tmp_path / f"replica-{name}.log", *flags, batch_delay_s=BATCH_DELAY_S
                )
            )
        for replica in started[:2]:
            wait_for_replica(replica)
        upstreams = [replica.url.removeprefix("http://") for replica in started[:2]]
        nginx = start_nginx(NGINX, upstreams, tmp_path / "nginx")
        started.append(nginx)
        wait_for_status(f"{nginx.url}/readyz", time.monotonic() + 20, nginx)
        yield Stack(started[:2], nginx)
    finally:
        for process in reversed(started):
            process.stop()


async def _load(nginx_url: str, victim: Process, stop_signal: signal.Signals) -> tuple[list[Outcome], float]:
    """TOTAL_REQUESTS classify POSTs from CONCURRENCY closed-loop clients; after STOP_AFTER responses the
    victim replica gets `stop_signal`. Returns every outcome and the monotonic time of the signal."""
    outcomes: list[Outcome] = []
    pending = iter(range(TOTAL_REQUESTS))
    signalled: list[float] = []

    async def client_loop(client: httpx.AsyncClient) -> None:
        for index in pending:
            request_id = f"scaleout-{index:04d}"
            image = index % len(IMAGES)
            started = time.monotonic()
            try:
                response = await client.post(
                    "/v1/classify",
                    content=IMAGES[image],
                    headers={"Content-Type": "image/png", "X-Request-ID": request_id},
                )
                status = response.status_code
                covid = response.json()["results"][0]["probabilities"]["covid"] if status == 200 else None
            except httpx.HTTPError:
                status, covid = 0, None  # a transport failure is a failed request like any other
            outcomes.append(Outcome(request_id, image, started, time.monotonic(), status, covid))
            if len(outcomes) == STOP_AFTER and not signalled:
                victim.process.send_signal(stop_signal)
                signalled.append(time.monotonic())

    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=nginx_url, timeout=60, limits=limits) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(CONCURRENCY)))
    assert signalled, "the load finished before the replica was stopped"
    return outcomes, signalled[0]


def _check_answers(outcomes: list[Outcome]) -> None:
    """Zero failed requests, and every answer for the same image identical whichever replica gave it."""
    failed = [(o.request_id, o.status) for o in outcomes if o.status != 200]
    assert len(outcomes) == TOTAL_REQUESTS
    assert failed == [], f"{len(failed)} failed client requests: {failed[:10]}"
    for image in range(len(IMAGES)):
        answers = {o.covid for o in outcomes if o.image == image}
        assert len(answers) == 1, f"image {image} got different answers: {answers}"


def _report(name: str, outcomes: list[Outcome], retried: int) -> None:
    seconds = max(o.finished for o in outcomes) - min(o.started for o in outcomes)
    latencies = sorted(o.finished - o.started for o in outcomes)
    p95 = latencies[int(0.95 * (len(latencies) - 1))]
    print(
        f"\n{name}: {len(outcomes)} requests, 0 failed, {retried} resent by nginx, "
        f"{len(outcomes) / seconds:.0f} req/s through nginx, p95 {p95 * 1000:.0f} ms"
    )


def test_sigterm_on_one_replica_loses_no_request_and_the_replica_drains(stack: Stack) -> None:
    victim, survivor = stack.replicas
    outcomes, signalled = asyncio.run(_load(stack.nginx.url, victim, signal.SIGTERM))
    returncode = victim.process.wait(timeout=DRAIN_TIMEOUT_S + 10)
    _check_answers(outcomes)

    log = victim.output()
    assert returncode in (0, -signal.SIGTERM), log  # uvicorn re-raises the signal after a clean stop
    assert "draining" in log and "Application shutdown complete" in log, log
    assert "failed at shutdown" not in log and "Traceback" not in log, log
    # What the victim accepted, it finished: every classify it logged ends 200 (accepted and computed) or
    # 503 (refused at the door while draining, then resent by nginx); none 500 or 504. Some 200s were
    # logged after the drain began: requests in flight at the signal that completed.
    statuses = re.findall(r"request_id=(\S+) POST /v1/classify status=(\d+)", log)
    assert statuses and {status for _, status in statuses} <= {"200", "503"}, statuses
    after_drain = re.findall(r"request_id=(\S+) POST /v1/classify status=200", log.split("draining", 1)[1])
    assert after_drain, "no request was in flight on the victim when SIGTERM arrived"

    # Each of those reached its client as a 200 through nginx, answered by the victim itself.
    by_id = {o.request_id: o for o in outcomes}
    victim_address = victim.url.removeprefix("http://")
    logged = access_log(stack.nginx, {o.request_id for o in outcomes})
    lines = {line["request_id"]: line for line in logged if line["uri"] == "/v1/classify"}
    for request_id in after_drain:
        assert by_id[request_id].status == 200
        assert by_id[request_id].started < signalled
        assert lines[request_id]["upstream_addr"].split(", ")[-1] == victim_address
    survivor_address = survivor.url.removeprefix("http://")
    late = [o for o in outcomes if o.started > signalled + 0.5]
    assert late and all(lines[o.request_id]["upstream_addr"].endswith(survivor_address) for o in late)
    retried = sum(", " in line["upstream_addr"] for line in lines.values())
    _report(f"SIGTERM ({len(after_drain)} finished while draining)", outcomes, retried)


def test_sigkill_on_one_replica_loses_no_request(stack: Stack) -> None:
    victim, survivor = stack.replicas
    outcomes, _ = asyncio.run(_load(stack.nginx.url, victim, signal.SIGKILL))
    assert victim.process.wait(timeout=10) == -signal.SIGKILL
    _check_answers(outcomes)

    # Requests the victim held when it died were resent: the first try failed on the victim (connection
    # reset or refused: nginx logs 502 for it) and the second succeeded on the survivor.
    victim_address = victim.url.removeprefix("http://")
    survivor_address = survivor.url.removeprefix("http://")
    logged = access_log(stack.nginx, {o.request_id for o in outcomes})
    lines = [line for line in logged if line["uri"] == "/v1/classify"]
    assert len(lines) == TOTAL_REQUESTS
    resent = [
        line
        for line in lines
        if line["upstream_addr"] == f"{victim_address}, {survivor_address}"
        and line["upstream_status"].startswith("502, 200")
    ]
    assert resent, "nginx resent no request: the victim held no request when it was killed"
    _report("SIGKILL", outcomes, len(resent))
