"""Faults against a real server: SIGTERM under a steady stream of requests, clients that vanish mid-upload
or while their image is queued, and a model file that fails its checksum.

SIGTERM under load extends tests/service/test_server.py (which drains a fixed burst of four queued requests)
to open-loop arrivals that keep coming before, during and after the signal, and accounts for every one of
them against the server's log: answered 200, answered with a clean 503 problem, or refused at the socket
without ever reaching the application. A request the log shows as accepted whose answer the client never
got would be lost; the check requires none.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.reliability.harness import MODEL_KEY, ROOT, Service, start, wait_ready
from tests.reliability.load import Shot, open_loop, statuses
from tests.reliability.overload import request_body

DRAIN_TIMEOUT_S = 5.0
EXIT_GRACE_S = 2.0 + 1.5
"""server.py gives uvicorn the drain time + 2 s; 1.5 s more for the interpreter to exit."""


@dataclass
class SigtermFigures:
    rate: float = 0.0
    sent: int = 0
    signal_after_s: float = 0.0
    queued_at_signal: int = 0
    completed: int = 0  # 200
    refused_cleanly: int = 0  # 503 problem+json while draining
    never_accepted: int = 0  # transport error, and the server's log never saw the request
    lost: int = 0  # accepted (in the log) but the client got no answer, or any other answer
    exit_code: int | None = None
    exit_after_s: float = 0.0
    exit_bound_s: float = DRAIN_TIMEOUT_S + EXIT_GRACE_S
    statuses: dict[str, int] = field(default_factory=dict)
    lost_ids: list[str] = field(default_factory=list)

    def problems(self) -> list[str]:
        found = []
        if self.lost:
            found.append(f"{self.lost} accepted requests got no clean answer: {self.lost_ids[:5]}")
        if self.exit_after_s > self.exit_bound_s:
            found.append(f"exit took {self.exit_after_s:.1f} s (bound {self.exit_bound_s:.1f} s)")
        if self.exit_code not in (0, -15):
            found.append(f"exit code {self.exit_code}")
        if not self.completed:
            found.append("no request completed: the load never reached the service")
        return found

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def sigterm_under_load(
    model_dir: Path, log: Path, *, rate: float = 50.0, duration_s: float = 4.0, signal_after_s: float = 1.5
) -> SigtermFigures:
    """Open-loop arrivals at `rate`/s for `duration_s`; SIGTERM `signal_after_s` into the run. The default
    rate is above the ~40 images/s the slowed model clears, so images are queued when the signal comes."""
    flags = ("--max-batch-size", "4", "--queue-capacity", "64", "--drain-timeout-s", str(DRAIN_TIMEOUT_S))
    service = start(model_dir, log, *flags, delay_s=0.1)
    try:
        wait_ready(service)
        figures = SigtermFigures(rate=rate, signal_after_s=signal_after_s)

        async def scenario() -> tuple[list[Shot], int, float]:
            load = asyncio.ensure_future(open_loop(service.url, request_body(), rate, duration_s, timeout=60))
            await asyncio.sleep(signal_after_s)
            loop = asyncio.get_running_loop()
            queued = await loop.run_in_executor(
                None, lambda: service.metric("cxr_queue_depth", model=MODEL_KEY)
            )
            figures.queued_at_signal = int(queued)
            code, seconds = await loop.run_in_executor(None, service.terminate)
            return await load, code, seconds

        shots, figures.exit_code, figures.exit_after_s = asyncio.run(scenario())
    finally:
        if service.process.poll() is None:
            service.process.kill()
            service.process.wait(30)
    seen = _logged_statuses(service.output())
    figures.sent = len(shots)
    figures.statuses = dict(statuses(shots))
    for shot in shots:
        logged = seen.get(shot.request_id)
        if shot.status == 200 and logged == 200:
            figures.completed += 1
        elif shot.status == 503 and shot.clean_error and logged == 503:
            figures.refused_cleanly += 1
        elif shot.status == 0 and logged is None:
            figures.never_accepted += 1
        else:
            figures.lost += 1
            figures.lost_ids.append(f"{shot.request_id}: client {shot.status or shot.error}, log {logged}")
    return figures


def _logged_statuses(log: str) -> dict[str, int]:
    """request id -> status from the server's access lines (service.api.middleware logs every request)."""
    return {
        found.group(1): int(found.group(2))
        for found in re.finditer(r"request_id=(\w+) POST /v1/classify status=(\d+)", log)
    }


def _raw_request(service: Service, body: bytes, declared_length: int) -> socket.socket:
    """Open a connection and send a classify request with `body` (possibly shorter than declared)."""
    host, port = service.url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=10)
    head = (
        "POST /v1/classify HTTP/1.1\r\nHost: cxr\r\nContent-Type: image/png\r\n"
        f"Content-Length: {declared_length}\r\n\r\n"
    )
    connection.sendall(head.encode() + body)
    return connection


@dataclass
class DisconnectFigures:
    batches_before: int = 0
    batches_after: int = 0
    expected_batches: int = 0
    dropped_cancelled: float = 0.0
    server_faults_logged: int = 0
    served_afterwards: int = 0

    def problems(self) -> list[str]:
        found = []
        if self.batches_after - self.batches_before != self.expected_batches:
            found.append(
                f"{self.batches_after - self.batches_before} batches ran, expected {self.expected_batches}"
            )
        if self.server_faults_logged:
            found.append(f"{self.server_faults_logged} server faults (500/Traceback) logged")
        if self.served_afterwards != 200:
            found.append(f"the next request got {self.served_afterwards}")
        return found


def _wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        time.sleep(0.01)


def disconnect_mid_upload(service: Service) -> DisconnectFigures:
    """Half a body, then the client hangs up: no inference, no server fault, the service carries on."""
    body = request_body()
    figures = DisconnectFigures(batches_before=service.batches(), expected_batches=1)
    in_progress = service.metric("cxr_http_requests_in_progress")
    connection = _raw_request(service, body[: len(body) // 2], declared_length=len(body))
    # The app has the request (its body half read) once the gauge counts it (each reading counts the
    # /metrics request making it too, alike before and after).
    _wait_for(lambda: service.metric("cxr_http_requests_in_progress") >= in_progress + 1)
    connection.close()
    _wait_for(lambda: "status=499" in service.output())
    figures.served_afterwards = httpx.post(
        f"{service.url}/v1/classify", content=body, headers={"Content-Type": "image/png"}, timeout=30
    ).status_code
    figures.batches_after = service.batches()  # the one request that completed
    log = service.output()
    figures.server_faults_logged = log.count("Traceback") + log.count("status=500")
    return figures


def disconnect_mid_queue(service: Service) -> DisconnectFigures:
    """A full request queued behind a running batch; the client hangs up: its image is never run.

    Needs a server with --max-batch-size 1 and a batch delay, so the queue holds the image long enough."""
    body = request_body()
    figures = DisconnectFigures(batches_before=service.batches(), expected_batches=1)
    dropped_before = service.metric("cxr_images_dropped_total", model=MODEL_KEY, reason="cancelled")

    async def scenario() -> int:
        async with httpx.AsyncClient(base_url=service.url, timeout=30) as client:
            runs = service.runs_started()
            running = asyncio.ensure_future(
                client.post("/v1/classify", content=body, headers={"Content-Type": "image/png"})
            )
            # The first image is in the model (the slowed server logged its run) before the second is
            # sent, so the second has to queue behind it.
            await asyncio.to_thread(_wait_for, lambda: service.runs_started() > runs)
            connection = await asyncio.to_thread(_raw_request, service, body, len(body))
            await asyncio.to_thread(
                _wait_for, lambda: service.metric("cxr_queue_depth", model=MODEL_KEY) >= 1
            )
            connection.close()
            return (await running).status_code

    figures.served_afterwards = asyncio.run(scenario())
    _wait_for(lambda: service.metric("cxr_queue_depth", model=MODEL_KEY) == 0)
    figures.batches_after = service.batches()
    figures.dropped_cancelled = (
        service.metric("cxr_images_dropped_total", model=MODEL_KEY, reason="cancelled") - dropped_before
    )
    log = service.output()
    figures.server_faults_logged = log.count("Traceback") + log.count("status=500")
    return figures


@dataclass
class ChecksumFigures:
    exit_code: int
    seconds: float
    output: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.output.splitlines() if "ERROR" in line]

    def problems(self) -> list[str]:
        found = []
        if self.exit_code == 0:
            found.append("cxr serve started with a corrupted model")
        if "Traceback" in self.output or len(self.error_lines) != 1:
            found.append(f"not a one-line reason:\n{self.output}")
        elif "does not match the model card" not in self.error_lines[0]:
            found.append(f"the reason does not say what failed: {self.error_lines[0]}")
        return found


def checksum_mismatch(model_dir: Path) -> ChecksumFigures:
    """Flip the model file's last byte, run the real `cxr serve`, and read what an operator would see."""
    model_file = model_dir / "tiny" / "1" / "model.onnx"
    model_file.write_bytes(model_file.read_bytes()[:-1] + bytes([model_file.read_bytes()[-1] ^ 1]))
    started = time.monotonic()
    command = [sys.executable, "-m", "cxr", "serve", "--model-dir", str(model_dir), "--port", "0"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    return ChecksumFigures(done.returncode, time.monotonic() - started, done.stdout + done.stderr)
