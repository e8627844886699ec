"""The CPU image, built from the Dockerfile and run for real with podman: the image's own entrypoint
serves the bundled model, classifies a chest X-ray, passes its HEALTHCHECK, and drains and exits 0 on
SIGTERM. Skips with the reason where podman cannot build or run containers."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.deploy.podman import Podman, Unavailable, ensure_base_image, podman
from tests.support.tinymodel import blob_image, encode

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT.parent / "shared" / "data" / "cxr"
IMAGE = "localhost/cxr-covid:test"
DRAIN_S = 30  # the image's default CXR_DRAIN_TIMEOUT_S

# Building the image takes 3-4 minutes (a first build also makes the base image): past the default timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def tool() -> Podman:
    try:
        return podman()
    except Unavailable as reason:
        pytest.skip(f"podman cannot run containers here: {reason}")


@pytest.fixture(scope="module")
def image(tool: Podman) -> Iterator[str]:
    base = ensure_base_image(tool)
    # buildah 1.28 does not expand FLAVOR's default inside `FROM base-${FLAVOR}`: give it explicitly.
    # --format docker keeps the HEALTHCHECK (the OCI format has none). --layers=false and --force-rm: with
    # the vfs driver every kept step or container is a full copy of the image's files (0.3-1.2 GB each,
    # about 10 GB a build), and what repeated runs kept filled a 250 GB disk here. buildah then also
    # removes the base image it built from, so each run makes it again (debootstrap, about a minute).
    try:
        tool.run(
            "build", "--format", "docker", "--layers=false", "--force-rm", "--network", "host",
            "--build-arg", "FLAVOR=cpu", "--build-arg", f"PYTHON_IMAGE={base}", "-t", IMAGE, str(ROOT),
            timeout=1500,
        )  # fmt: skip
        yield IMAGE
    finally:  # a failed build's leftovers too: the store keeps nothing from this run
        tool.run("rmi", "-f", IMAGE, check=False)
        tool.run("image", "prune", "-f", check=False)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _state(tool: Podman, name: str) -> dict[str, object]:
    state = json.loads(tool.run("inspect", "--format", "{{json .State}}", name).stdout)
    assert isinstance(state, dict)
    return state


@pytest.fixture
def container(tool: Podman, image: str) -> Iterator[tuple[str, str]]:
    name = f"cxr-test-{_free_port()}"
    port = _free_port()
    # Host networking (no CNI here), bound to loopback only; no systemd timer for the HEALTHCHECK: the test
    # runs it itself.
    tool.run(
        "run", "-d", "--name", name, "--network", "host", "--health-interval", "disable",
        "-e", "CXR_HOST=127.0.0.1", "-e", f"CXR_PORT={port}", image,
    )  # fmt: skip
    try:
        yield name, f"http://127.0.0.1:{port}"
    finally:
        tool.run("rm", "-f", "-t", "0", name, check=False)


def _sample() -> tuple[bytes, str]:
    """A real chest X-ray from ../shared/data when it is there, else a generated test image."""
    files = sorted(SAMPLES.glob("*.png"))
    if files:
        return files[0].read_bytes(), files[0].name
    return encode(blob_image()), "generated"


def test_the_cpu_image_serves_classifies_passes_its_healthcheck_and_drains(
    tool: Podman, container: tuple[str, str]
) -> None:
    name, url = container
    deadline = time.monotonic() + 180
    with httpx.Client(base_url=url, timeout=10) as client:
        while True:
            try:
                if client.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            logs = tool.run("logs", name, check=False)
            assert _state(tool, name)["Running"], f"the container exited:\n{logs.stdout}{logs.stderr}"
            assert time.monotonic() < deadline, f"not ready in 180 s:\n{logs.stderr[-3000:]}"
            time.sleep(0.5)
        body, what = _sample()
        answer = client.post("/v1/classify", content=body, headers={"Content-Type": "image/png"})
        if what == "generated":  # not a chest radiograph: the input-domain check refuses it
            assert answer.status_code == 422, answer.text
            assert answer.json()["type"].endswith("/not-a-chest-radiograph")
        else:
            assert answer.status_code == 200, (what, answer.text)
            result = answer.json()["results"][0]
            assert result["model"]["name"] == "cxr-compact"
            assert abs(sum(result["probabilities"].values()) - 1) < 1e-4

    health = tool.run("healthcheck", "run", name, check=False)
    assert health.returncode == 0, health.stdout + health.stderr

    started = time.monotonic()
    tool.run("stop", "-t", str(DRAIN_S + 10), name, timeout=DRAIN_S + 60)  # SIGTERM (the image's STOPSIGNAL)
    stopped_after = time.monotonic() - started
    state = _state(tool, name)
    logs = tool.run("logs", name, check=False).stderr
    assert state["ExitCode"] == 0, logs[-3000:]
    assert stopped_after < DRAIN_S, logs[-3000:]
    assert "Application shutdown complete" in logs


def test_the_image_runs_the_installed_command_not_the_source_tree(tool: Podman, image: str) -> None:
    """`cxr predict` inside the image, from its working directory, on the wheel's model repository."""
    completed = tool.run(
        "run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
        "ls /app; python3 -c \"import service, sys; print(service.__file__)\"; cxr --help > /dev/null && echo help-ok",
    )  # fmt: skip
    lines = completed.stdout.splitlines()
    assert "/opt/venv/" in lines[-2] and lines[-1] == "help-ok", completed.stdout
