"""Fixtures for the web page tests: the tiny model repository, one real uvicorn (`cxr serve` on a free
loopback port, readiness polled) per module, and headless Debian Chromium driven by Playwright."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.serverproc import ROOT, Server, serving
from tests.support.tinymodel import make_tiny_model

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root in a container, where Chromium's sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`cxr serve` on the tiny model (CAM peaks where the image is bright), ready to classify."""
    root = tmp_path_factory.mktemp("web")
    make_tiny_model(root / "models")
    with serving(root / "models", root / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium (Playwright cannot download its own browser here, nor in CI)."""
    if not CHROMIUM.exists() or shutil.which(str(CHROMIUM)) is None:
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium chromium-driver (.ci/run does)")
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is missing: pip install -e '.[dev]'"
    )
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture(scope="module")
def ci_logs() -> Path:
    """Where screenshots go: CI keeps $CXR_CI_LOGS (default ci-logs/, as .ci/run uses)."""
    logs = Path(os.environ.get("CXR_CI_LOGS", ROOT / "ci-logs"))
    logs.mkdir(parents=True, exist_ok=True)
    return logs
