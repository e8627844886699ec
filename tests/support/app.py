"""The real app for tests: started through its lifespan with an httpx client over ASGI, settings for the
tiny model, a gate that holds OnnxModel.run(), a Prometheus sample reader and a test PNG."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from asgi_lifespan import LifespanManager
from prometheus_client.parser import text_string_to_metric_families

from service.api.app import create_app
from service.inference.model import OnnxModel
from service.settings import Settings
from tests.support.tinymodel import blob_image, encode


class Gate:
    """Holds every OnnxModel.run() (warm-up included) while closed; records the padded batch sizes run."""

    def __init__(self) -> None:
        self.open_event = threading.Event()
        self.open_event.set()
        self.sizes: list[int] = []
        self.waiting = 0

    def close(self) -> None:
        self.open_event.clear()

    def open(self) -> None:
        self.open_event.set()

    def wrap(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def run(model: OnnxModel, batch: np.ndarray) -> Any:
            self.sizes.append(len(batch))
            self.waiting += 1
            try:
                if not self.open_event.wait(timeout=30):
                    raise RuntimeError("test gate never opened")
            finally:
                self.waiting -= 1
            return original(model, batch)

        return run


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition (a readiness wait, never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not reached")
        await asyncio.sleep(0.005)


@asynccontextmanager
async def serve(settings: Settings, *, wait_ready: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """The real app: lifespan started, optionally warmed, with an httpx client over ASGI."""
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30, shutdown_timeout=30):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://cxr.test") as client:
            if wait_ready:
                deadline = time.monotonic() + 30
                while (await client.get("/readyz")).status_code != 200:
                    if time.monotonic() > deadline:
                        raise TimeoutError("service never became ready")
                    await asyncio.sleep(0.005)
            yield client


def settings_for(model_dir: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"providers": ["CPUExecutionProvider"], "decode_workers": 2, **overrides}
    return Settings(model_dir=model_dir, **values)


def metric(text: str, name: str, **labels: str) -> float:
    """One sample's value from a Prometheus text exposition (0 when absent)."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def png(**kwargs: Any) -> bytes:
    return encode(blob_image(**kwargs))


PNG_HEADERS = {"Content-Type": "image/png"}


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """An RFC 9457 answer with the given status, a string detail, no traceback and the request id."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail", "instance"} <= set(body)
    assert isinstance(body["detail"], str) and body["detail"]
    assert "Traceback" not in response.text
    assert body["request_id"] == response.headers["x-request-id"]
    return body
