"""Starting and waiting for a `cxr serve` subprocess with `--port 0`: one implementation for every suite.

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

ROOT = Path(__file__).resolve().parents[1]

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


@dataclass
class Server:
    """A running `cxr serve`: its process, its combined stdout/stderr log file, and its base URL."""

    process: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def serving(
    model_dir: Path, log: Path, *flags: str, env: dict[str, str] | None = None, timeout: float = 60.0
) -> Iterator[Server]:
    """`cxr serve` on a free loopback port, ready (models warm) when entered, terminated on exit.

    `env` adds variables (e.g. CXR_API_KEYS) to a copy of this process's environment without its keys."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    environment.pop("CXR_API_KEYS", None)
    environment.update(env or {})
    command = [sys.executable, "-m", "service.cli", "serve", "--host", "127.0.0.1", "--port", "0"]
    command += ["--model-dir", str(model_dir), "--providers", "CPUExecutionProvider", *flags]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=sink, stderr=subprocess.STDOUT)
    running = Server(process, log)
    try:
        deadline = time.monotonic() + timeout
        running.url = bound_url(running.process, running.output, deadline)
        wait_for_status(f"{running.url}/readyz", running.process, running.output, deadline)
        yield running
    finally:
        running.process.terminate()
        try:
            running.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            running.process.kill()
            running.process.wait()
