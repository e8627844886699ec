"""The API docs pages in a real browser, offline: Swagger UI at /docs and ReDoc at /redoc must render the
service's OpenAPI schema from assets the service itself serves (fastapi-offline's), with every request to
another origin refused and recorded. FastAPI's default pages load their scripts from a CDN, and were blank
offline or behind a hospital proxy."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.support.serverproc import Server

pytestmark = pytest.mark.slow
expect = pytest.importorskip(
    "playwright.sync_api", reason="playwright is missing: pip install -e '.[dev]'"
).expect

TIMEOUT_MS = 30_000


@contextmanager
def _offline(browser: Any, server: Server) -> Iterator[tuple[Any, list[str], list[str]]]:
    """A page that can reach the server and nothing else: (page, outside requests refused, script errors)."""
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    outside: list[str] = []
    errors: list[str] = []

    def only_the_server(route: Any) -> None:
        if route.request.url.startswith(f"{server.url}/"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort("internetdisconnected")

    context.route("**/*", only_the_server)
    page = context.new_page()
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        yield page, outside, errors
    finally:
        context.close()


def test_swagger_ui_renders_offline(browser: Any, server: Server, ci_logs: Path) -> None:
    with _offline(browser, server) as (page, outside, errors):
        response = page.goto(f"{server.url}/docs")
        assert response is not None and response.status == 200
        expect(page.locator(".swagger-ui .info .title")).to_contain_text("cxr-covid", timeout=TIMEOUT_MS)
        # The operations come from /openapi.json, /v2 included.
        expect(page.locator(".opblock-summary-path", has_text="/v2/models/{name}/infer").first).to_be_visible(
            timeout=TIMEOUT_MS
        )
        page.screenshot(path=str(ci_logs / "docs-swagger-offline.png"))
    assert outside == [] and errors == []


def test_redoc_renders_offline(browser: Any, server: Server, ci_logs: Path) -> None:
    with _offline(browser, server) as (page, outside, errors):
        response = page.goto(f"{server.url}/redoc")
        assert response is not None and response.status == 200
        expect(page.locator("h1").first).to_contain_text("cxr-covid", timeout=TIMEOUT_MS)
        expect(page.get_by_text("v2 inference", exact=True).first).to_be_attached(timeout=TIMEOUT_MS)
        page.screenshot(path=str(ci_logs / "docs-redoc-offline.png"))
    assert outside == [] and errors == []
