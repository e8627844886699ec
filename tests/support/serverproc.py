"""Starting a `cxr serve` subprocess and waiting for it: one implementation for every test suite.

The kernel picks a free loopback port and uvicorn logs the one it bound; tests read it from the server's
log, then poll an HTTP endpoint (a readiness wait, never a fixed sleep).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

_BOUND = re.compile(r"Uvicorn running on (http://127\.0\.0\.1:\d+)")


def bound_url(
    process: subprocess.Popen[bytes], output: Callable[[], str], deadline: float, what: str = "server"
) -> str:
    """The base URL uvicorn logged; raises if the process exits or the monotonic `deadline` passes first."""
    while True:
        found = _BOUND.search(output())
        if found:
            return found.group(1)
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited early:\n{output()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not start:\n{output()}")
        time.sleep(0.02)


def wait_for_status(
    url: str, process: subprocess.Popen[bytes], output: Callable[[], str], deadline: float, status: int = 200
) -> None:
    """Poll `url` until it answers `status`; raises if the process exits or the deadline passes first."""
    with httpx.Client(timeout=2) as client:
        while True:
            try:
                if client.get(url).status_code == status:
                    return
            except httpx.TransportError:
                pass
            if process.poll() is not None:
                raise RuntimeError(f"process exited while waiting for {url}:\n{output()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} never answered {status}:\n{output()}")
            time.sleep(0.02)


ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Server:
    """A `cxr serve` child process: its combined stdout/stderr log file, and its base URL once known."""

    process: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def run_log(self) -> Path:
        """Where a slowed server (delay_s) logs the start of each model run, one line each."""
        return self.log.with_suffix(".runs")

    def runs_started(self) -> int:
        """Model runs started so far (warm-up included); 0 for a server that is not slowed."""
        return len(self.run_log.read_text().splitlines()) if self.run_log.exists() else 0


def start_server(
    model_dir: Path,
    log: Path,
    *flags: str,
    port: int = 0,
    delay_s: float = 0.0,
    env: dict[str, str] | None = None,
) -> Server:
    """Launch `cxr serve` on loopback with the CPU provider, without waiting for it. Port 0 lets the kernel
    choose (wait_ready reads it from the log); with `delay_s` every model batch is slowed by that much
    (tests.service.slow_server), so work is still queued when a test needs it to be."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "CXR_TEST_BATCH_DELAY_S": str(delay_s)}
    environment.pop("CXR_API_KEYS", None)
    environment["CXR_TEST_RUN_LOG"] = str(log.with_suffix(".runs"))
    environment.update(env or {})
    module = "tests.service.slow_server" if delay_s else "cxr"
    command = [sys.executable, "-m", module, "serve", "--host", "127.0.0.1", "--port", str(port)]
    command += ["--model-dir", str(model_dir), "--providers", "CPUExecutionProvider", *flags]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=sink, stderr=subprocess.STDOUT)
    return Server(process, log, f"http://127.0.0.1:{port}" if port else "")


def wait_bound(server: Server, timeout: float = 30.0) -> None:
    """Fill in `server.url` from the port uvicorn logged (for a server started on port 0)."""
    if not server.url:
        server.url = bound_url(server.process, server.output, time.monotonic() + timeout)


def wait_ready(server: Server, timeout: float = 60.0) -> None:
    """Wait until the server is bound and GET /readyz answers 200; raises if it exits first."""
    deadline = time.monotonic() + timeout
    wait_bound(server, timeout)
    wait_for_status(f"{server.url}/readyz", server.process, server.output, deadline)


@contextmanager
def serving(
    model_dir: Path, log: Path, *flags: str, env: dict[str, str] | None = None, timeout: float = 60.0
) -> Iterator[Server]:
    """`cxr serve` on a free loopback port, ready (models warm) when entered, terminated on exit.

    `env` adds variables (e.g. CXR_API_KEYS) to a copy of this process's environment without its keys."""
    running = start_server(model_dir, log, *flags, env=env)
    try:
        wait_ready(running, timeout)
        yield running
    finally:
        running.process.terminate()
        try:
            running.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            running.process.kill()
            running.process.wait()
