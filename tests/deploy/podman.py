"""Build and run the project's container image with Debian's podman, on a machine with no registry.

What works here (measured, see shared field notes): the `vfs` storage driver, runc (crun refuses the
hybrid cgroup layout), the cgroupfs manager, default ulimits within the host's hard limit, host networking;
the base image made locally by debootstrap and `podman import`, with the host's CA certificates so that pip
inside the build reaches the package registry as the host does. Storage lives under /var/tmp/cxr-podman;
the container test builds without cached layers and removes its image afterwards (with vfs every kept
layer is a full copy of the files), so the store does not grow from run to run (the base image goes with
the build, and the next run makes it again).
"""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

STATE = Path(os.environ.get("CXR_PODMAN_STATE", "/var/tmp/cxr-podman"))
BASE_IMAGE = "localhost/cxr-base:bookworm"
_SOURCES = Path("/etc/apt/sources.list.d/debian.sources")


class Unavailable(Exception):
    """podman cannot build or run containers here; the message says why."""


@dataclass(frozen=True)
class Podman:
    """podman with this project's storage and configuration; `run` returns the completed process."""

    environment: dict[str, str]

    def command(self, *args: str) -> list[str]:
        return [
            "podman",
            "--storage-driver",
            "vfs",
            "--root",
            str(STATE / "storage"),
            "--runroot",
            str(STATE / "run"),
            *args,
        ]

    def run(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        completed = subprocess.run(
            self.command(*args),
            capture_output=True,
            text=True,
            env=self.environment,
            timeout=timeout,
            check=False,
        )
        if check and completed.returncode != 0:
            raise RuntimeError(
                f"podman {' '.join(args[:2])} exited {completed.returncode}:\n{completed.stderr[-4000:]}"
            )
        return completed


def podman() -> Podman:
    """A configured podman, or Unavailable with the reason."""
    missing = [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]
    if missing:
        raise Unavailable(f"not installed: {', '.join(missing)} (.ci/apt-packages.txt lists them)")
    if os.geteuid() != 0:
        raise Unavailable("needs root (debootstrap, and rootful podman with the vfs driver)")
    STATE.mkdir(parents=True, exist_ok=True)
    # podman's default nofile and nproc exceed this machine's hard limits, which runc may not raise.
    limits = {
        "nofile": _within(resource.RLIMIT_NOFILE, 20000),
        "nproc": _within(resource.RLIMIT_NPROC, 32768),
    }
    ulimits = ", ".join(f'"{name}={value}:{value}"' for name, value in limits.items())
    config = STATE / "containers.conf"
    config.write_text(
        "[containers]\n"
        f"default_ulimits = [{ulimits}]\n"
        "[engine]\n"
        'runtime = "runc"\n'
        'cgroup_manager = "cgroupfs"\n'
        'events_logger = "file"\n'
    )
    tool = Podman({**os.environ, "CONTAINERS_CONF": str(config)})
    probe = tool.run("info", check=False)
    if probe.returncode != 0:
        raise Unavailable(f"podman info failed: {probe.stderr.strip()[-500:]}")
    return tool


def _within(limit: int, wanted: int) -> int:
    hard = resource.getrlimit(limit)[1]
    return wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)


def _mirror() -> str:
    """The Debian mirror apt uses on this machine (the one a registry-only network can reach)."""
    if _SOURCES.is_file():
        for line in _SOURCES.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    return "http://deb.debian.org/debian"


def ensure_base_image(tool: Podman) -> str:
    """The Python base image (bookworm minbase with python3, venv, pip, CA certificates), made once."""
    if tool.run("image", "exists", BASE_IMAGE, check=False).returncode == 0:
        return BASE_IMAGE
    root = STATE / "bookworm"
    shutil.rmtree(root, ignore_errors=True)
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,python3-pip,ca-certificates",
            "bookworm",
            str(root),
            _mirror(),
        ],
        capture_output=True,
        timeout=900,
        check=True,
    )
    # The host's extra certificate authorities (a TLS-inspecting egress proxy, for one), so pip inside the
    # build trusts what the host's pip trusts.
    extra = Path("/usr/local/share/ca-certificates")
    if extra.is_dir():
        for certificate in extra.glob("*.crt"):
            shutil.copy(certificate, root / "usr/local/share/ca-certificates" / certificate.name)
    subprocess.run(
        ["chroot", str(root), "update-ca-certificates"], capture_output=True, timeout=120, check=True
    )
    (root / "etc/pip.conf").write_text("[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n")
    archive = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
    imported = subprocess.run(
        tool.command("import", "-", BASE_IMAGE),
        stdin=archive.stdout,
        capture_output=True,
        env=tool.environment,
        timeout=600,
        check=False,
    )
    archive.wait(timeout=60)
    if imported.returncode != 0:
        raise RuntimeError(f"podman import failed: {imported.stderr.decode()[-2000:]}")
    shutil.rmtree(root, ignore_errors=True)
    return BASE_IMAGE
