"""Waiting for a `cxr serve` subprocess started with `--port 0`: one implementation for every test suite.

The kernel picks a free loopback port and uvicorn logs the one it bound; tests read it from the server's
log, then poll an HTTP endpoint (a readiness wait, never a fixed sleep).
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Callable

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
