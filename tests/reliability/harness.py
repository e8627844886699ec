"""A real `cxr serve` (uvicorn) on a free loopback port, for the reliability checks and their report.

The server is a child process, so the checks see what a deployment sees: its exit status, its stderr (every
log line it writes), its resident memory, and what happens to requests when it gets SIGTERM. Its model is
the tiny test model, slowed by `delay_s` per batch (tests.service.slow_server) so that the model, not the
loopback HTTP stack shared with the load generator on a 2-core machine, is the bottleneck, as a real CNN is.
"""

from __future__ import annotations

import signal
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

from tests.support.serverproc import Server, start_server, wait_ready
from tests.support.tinymodel import make_tiny_model

ROOT = Path(__file__).resolve().parents[2]
MODEL_KEY = "tiny/1"


class Service(Server):
    """One running server (tests.support.serverproc.Server), with what the reliability checks read from it."""

    def rss_bytes(self) -> int:
        """Resident memory of the server process now (0 once it has exited)."""
        try:
            return int(psutil.Process(self.process.pid).memory_info().rss)
        except psutil.NoSuchProcess:
            return 0

    def metric(self, name: str, **labels: str) -> float:
        """One Prometheus sample from GET /metrics (0 when absent)."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0

    def batches(self) -> int:
        """Batches the model has run since warm-up (warm-up runs bypass the batch metric)."""
        return int(self.metric("cxr_batch_size_count", model=MODEL_KEY))

    def terminate(self) -> tuple[int, float]:
        """SIGTERM, then wait: (exit status, seconds from the signal to the exit)."""
        signalled = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        returncode = self.process.wait(timeout=120)
        return returncode, time.monotonic() - signalled


def tiny_model_dir(root: Path) -> Path:
    """A model repository holding the tiny test model (made fresh: nothing downloaded)."""
    repository = root / "models"
    if not (repository / "tiny").exists():
        make_tiny_model(repository)
    return repository


def free_port() -> int:
    """A port free on loopback now. (Port 0 is not used: at --log-level warning uvicorn does not log the
    port it bound, and the load checks run at that level.)"""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(
    model_dir: Path, log: Path, *flags: str, delay_s: float = 0.0, env: dict[str, str] | None = None
) -> Service:
    """Launch `cxr serve` on a free loopback port without waiting for it (tests.support.serverproc.start_server)."""
    server = start_server(model_dir, log, *flags, port=free_port(), delay_s=delay_s, env=env)
    return Service(server.process, server.log, server.url)


@contextmanager
def running(
    model_dir: Path, log: Path, *flags: str, delay_s: float = 0.0, env: dict[str, str] | None = None
) -> Iterator[Service]:
    """A ready server for the block; killed afterwards if the block did not stop it itself."""
    service = start(model_dir, log, *flags, delay_s=delay_s, env=env)
    try:
        wait_ready(service)
        yield service
    finally:
        if service.process.poll() is None:
            service.process.kill()
            service.process.wait(30)
