"""Real processes for the scale-out tests: `cxr serve` replicas on free loopback ports and nginx running
deploy/nginx.conf with only its upstream servers and listen address swapped for local ones."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.serverproc import bound_url
from tests.support.serverproc import wait_for_status as _wait_for_status

ROOT = Path(__file__).resolve().parents[2]
NGINX_TEMPLATE = ROOT / "deploy" / "nginx.conf"
_BEGIN, _END = "# upstream-servers-begin", "# upstream-servers-end"
_LISTEN = "listen 8080;"


def nginx_binary() -> str | None:
    """nginx from PATH, or Debian's /usr/sbin/nginx (not on a non-root user's PATH)."""
    found = shutil.which("nginx")
    if found is None and os.access("/usr/sbin/nginx", os.X_OK):
        found = "/usr/sbin/nginx"
    return found


@dataclass
class Process:
    """A child process started by these helpers, its combined output file and its base URL."""

    process: subprocess.Popen[bytes]
    log: Path
    url: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL if it has not exited in `timeout` s (only ever this one child)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)


def start_replica(model_dir: Path, log: Path, *flags: str, batch_delay_s: float = 0.0) -> Process:
    """`cxr serve` on a kernel-chosen loopback port. tests.service.slow_server is `cxr` with every batch
    slowed by `batch_delay_s` (a sleep, not CPU), so work is still queued when a signal arrives."""
    env = {**os.environ, "CXR_TEST_BATCH_DELAY_S": str(batch_delay_s), "PYTHONPATH": str(ROOT)}
    for name in [name for name in env if name.startswith("CXR_") and name != "CXR_TEST_BATCH_DELAY_S"]:
        env.pop(name)  # the developer's own CXR_* settings must not change the test
    command = [sys.executable, "-m", "tests.service.slow_server", "serve", "--host", "127.0.0.1"]
    command += ["--port", "0", "--model-dir", str(model_dir), "--providers", "CPUExecutionProvider"]
    command += ["--log-level", "info", *flags]
    with log.open("ab") as sink:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT)
    return Process(process, log)


def wait_for_replica(replica: Process, timeout: float = 60.0) -> None:
    """Poll the log for the port uvicorn bound, then /readyz until every model is warmed."""
    deadline = time.monotonic() + timeout
    replica.url = bound_url(replica.process, replica.output, deadline, "replica")
    wait_for_status(f"{replica.url}/readyz", deadline, replica)


def wait_for_status(url: str, deadline: float, owner: Process, status: int = 200) -> None:
    _wait_for_status(url, owner.process, owner.output, deadline, status)


def render_nginx_conf(template: str, upstreams: list[str], port: int, temp_dir: Path) -> str:
    """deploy/nginx.conf for loopback: the upstream block's servers become `upstreams` (with the template's
    own max_fails/fail_timeout, minus `resolve` and `weight`, which need DNS names), `listen 8080` becomes
    127.0.0.1:`port`, and nginx's scratch paths move into `temp_dir`. Anything else is left as it is."""
    if template.count(_BEGIN) != 1 or template.count(_END) != 1 or template.count(_LISTEN) != 1:
        raise ValueError("deploy/nginx.conf lost its upstream-servers markers or its `listen 8080;` line")
    head, rest = template.split(_BEGIN)
    block, tail = rest.split(_END)
    first = re.search(r"^\s*server\s+\S+\s+([^;]*);", block, re.MULTILINE)
    if first is None:
        raise ValueError("no `server` line between the upstream-servers markers")
    parameters = [p for p in first.group(1).split() if p != "resolve" and not p.startswith("weight=")]
    servers = "".join(f"\n        server {address} {' '.join(parameters)};" for address in upstreams)
    text = f"{head}{_BEGIN}{servers}\n        {_END}{tail}".replace(_LISTEN, f"listen 127.0.0.1:{port};")
    # Distribution builds put temp paths under /var/lib/nginx, which a non-root test user cannot create.
    scratch = "".join(
        f"\n    {kind}_temp_path {temp_dir / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return text.replace("http {", "http {" + scratch, 1)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_nginx(binary: str, upstreams: list[str], workdir: Path, timeout: float = 20.0) -> Process:
    """nginx in the foreground (`daemon off`) on a free loopback port, ready when /nginx-health answers.
    A port taken between choosing and binding is retried with another, at most three times."""
    workdir.mkdir(parents=True, exist_ok=True)
    template = NGINX_TEMPLATE.read_text()
    for _ in range(3):
        port = _free_port()
        config = workdir / "nginx.conf"
        config.write_text(render_nginx_conf(template, upstreams, port, workdir))
        log = workdir / f"nginx-{port}.log"
        command = [binary, "-p", str(workdir), "-c", str(config), "-e", "stderr"]
        command += ["-g", f"daemon off; pid {workdir / 'nginx.pid'};"]
        with log.open("ab") as sink:  # O_APPEND: nginx writes here from several processes and fds
            process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
        nginx = Process(process, log, url=f"http://127.0.0.1:{port}")
        try:
            wait_for_status(f"{nginx.url}/nginx-health", time.monotonic() + timeout, nginx)
            return nginx
        except RuntimeError:
            if "Address already in use" not in nginx.output():
                raise
    raise RuntimeError("nginx could not bind a free port in three tries")


def access_log(
    nginx: Process, request_ids: set[str] | None = None, timeout_s: float = 15.0
) -> list[dict[str, Any]]:
    """The JSON access-log lines (log_format `upstreams` in deploy/nginx.conf) nginx wrote to stdout.

    nginx writes a request's line in its log phase, after the response went out, so a client can hold its
    answer before the line exists: with `request_ids`, wait (bounded) until every one of them is logged."""
    deadline = time.monotonic() + timeout_s
    while True:
        lines = [json.loads(line) for line in nginx.output().splitlines() if line.startswith("{")]
        logged = {line.get("request_id") for line in lines}
        if not request_ids or request_ids <= logged or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)
