"""The servers a benchmark measures, each a real process on a free loopback port.

`cxr serve` (with and without batching) and the naive baseline are uvicorn processes started on port 0,
so the kernel picks a free port, found from the process's listening socket; the Ray Serve peer gets a
port found free just before it starts (Ray needs a number, and its driver listens on ports of its own). Every target is awaited on its readiness route (no fixed sleeps),
stopped with SIGTERM, and killed with its process group only if it does not stop in time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Target:
    """A running server: its base URL, process and log file."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def rss_bytes(self) -> int:
        """Resident memory of the server and its children (Ray runs its replica in another process)."""
        try:
            root = psutil.Process(self.process.pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0
        total = 0
        for process in processes:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                total += process.memory_info().rss
        return total


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _listening_url(process: subprocess.Popen[bytes]) -> str:
    """The loopback URL the process itself listens on (port 0 made the kernel choose), or ''."""
    try:
        sockets = psutil.Process(process.pid).net_connections(kind="tcp")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return ""
    ports = [s.laddr.port for s in sockets if s.status == psutil.CONN_LISTEN and s.laddr.ip == "127.0.0.1"]
    return f"http://127.0.0.1:{ports[0]}" if len(ports) == 1 else ""


def _wait(
    process: subprocess.Popen[bytes], log: Path, port: int | None, ready_path: str, timeout_s: float
) -> str:
    deadline = time.monotonic() + timeout_s
    url = f"http://127.0.0.1:{port}" if port else ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{log.name}: exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        url = url or _listening_url(process)
        if url:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + ready_path, timeout=2.0).status_code == 200:
                    return url
        time.sleep(0.05)
    raise TimeoutError(f"{log.name}: not ready after {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def launch(
    name: str,
    command: list[str],
    log: Path,
    *,
    ready_path: str,
    port: int | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float = 120.0,
) -> Iterator[Target]:
    """Start `command` on loopback `port` (None: the one port the process itself listens on, e.g. after
    uvicorn's `--port 0`), wait until `ready_path` answers 200, yield it, then stop it: SIGTERM, and
    SIGKILL to its own process group after 30 s."""
    # CXR_* variables would silently change a target's settings: every target gets only its flags.
    inherited = {key: value for key, value in os.environ.items() if not key.startswith("CXR_")}
    environment = {**inherited, "PYTHONPATH": str(ROOT), **(env or {})}
    with log.open("wb") as sink:
        # A session of its own, so a stuck target can be killed with its children and nothing else.
        process = subprocess.Popen(
            command, cwd=ROOT, env=environment, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        url = _wait(process, log, port, ready_path, timeout_s)
        yield Target(name, url, process, log)
    finally:
        # The whole process group: a framework's own worker processes (LitServe's API server and workers)
        # outlive their parent otherwise, and kept spinning a core each after the bench had finished.
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        _signal_group(process.pid, signal.SIGKILL)  # whatever of the group is left once the leader is gone
        _wait_group_gone(process.pid)


def _signal_group(group: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # nothing left in the group
        os.killpg(group, sig)


def _wait_group_gone(group: int, timeout_s: float = 10.0) -> None:
    """Until no live process of `group` is left (a SIGKILLed one takes a moment to die): the next target
    must not share the CPU with the last one's workers. Zombies waiting for init to reap them are dead."""

    def alive() -> list[psutil.Process]:
        left = []
        for candidate in psutil.process_iter(["status"]):
            with contextlib.suppress(psutil.Error, OSError):  # gone while we looked
                if os.getpgid(candidate.pid) == group and candidate.info["status"] != psutil.STATUS_ZOMBIE:
                    left.append(candidate)
        return left

    with contextlib.suppress(psutil.Error):
        psutil.wait_procs(alive(), timeout=timeout_s)


def service_command(
    model_dir: Path, *, max_batch_size: int, max_queue_delay_ms: float, extra: list[str]
) -> list[str]:
    """`cxr serve` on port 0 with CPU (or the given providers) and the benchmark's batching settings."""
    return [
        sys.executable,
        "-m",
        "cxr",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--model-dir",
        str(model_dir),
        "--max-batch-size",
        str(max_batch_size),
        "--max-queue-delay-ms",
        str(max_queue_delay_ms),
        *extra,
    ]


def floor_command() -> list[str]:
    """uvicorn's defaults (uvloop, httptools), as `cxr serve` runs it, without the per-request access line."""
    return [
        sys.executable, "-m", "uvicorn", "loadtest.floor_app:app", "--host", "127.0.0.1", "--port", "0",
        "--no-access-log",
    ]  # fmt: skip


def naive_command() -> list[str]:
    return [sys.executable, "-m", "uvicorn", "loadtest.naive_app:app", "--host", "127.0.0.1", "--port", "0"]


def peer_command(model_dir: Path, port: int, *, max_batch_size: int, max_queue_delay_ms: float) -> list[str]:
    """The Ray Serve peer on `port` (pass the same port to `launch`)."""
    return [
        sys.executable,
        "-m",
        "loadtest.peer_ray",
        "--model-dir",
        str(model_dir),
        "--port",
        str(port),
        "--max-batch-size",
        str(max_batch_size),
        "--max-queue-delay-ms",
        str(max_queue_delay_ms),
    ]
