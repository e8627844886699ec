"""The app factory and its lifespan (service.api.app, httpx over ASGI): readiness after warm-up, the bounded
queue and its overload answers, deadlines, disconnects, drain, model integrity, the model listing, CORS."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from service.api.app import create_app
from service.inference.batch_policy import choose_max_batch_size
from service.inference.batcher import batch_sizes
from service.inference.model import ModelIntegrityError
from tests.support.app import PNG_HEADERS, Gate, assert_problem, metric, png, serve, settings_for, wait_until
from tests.support.tinymodel import make_tiny_model

pytestmark = pytest.mark.anyio


async def test_readyz_is_503_until_warm_up_completes(model_dir: Path, gate: Gate) -> None:
    gate.close()
    settings = settings_for(model_dir, max_batch_size=4, batch_policy="fixed")
    async with serve(settings, wait_ready=False) as client:
        await wait_until(lambda: gate.waiting == 1)
        not_ready = await client.get("/readyz")
        warming = (await client.get("/v1/models")).json()["models"][0]
        alive = await client.get("/healthz")
        early = await client.post("/v1/classify", content=png(), headers=PNG_HEADERS)
        gate.open()
        deadline = time.monotonic() + 10
        while (ready := await client.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        late = await client.post("/v1/classify", content=png(), headers=PNG_HEADERS)
    assert "warming up" in assert_problem(not_ready, 503)["detail"]
    assert warming["batching"] is None  # nothing measured yet
    assert alive.status_code == 200
    assert_problem(early, 503)
    assert early.headers["retry-after"] == "1"
    assert ready.json()["models"] == {"tiny/1": ["CPUExecutionProvider"]}
    assert list(dict.fromkeys(gate.sizes)) == [1, 2, 4]  # every padded batch shape ran before readiness
    assert late.status_code == 200


async def test_queue_full_gives_503_while_accepted_requests_succeed(model_dir: Path, gate: Gate) -> None:
    burst = 10
    settings = settings_for(model_dir, max_batch_size=1, queue_capacity=2, max_queue_delay_ms=0)
    async with serve(settings) as client:
        gate.close()
        tasks = [
            asyncio.ensure_future(client.post("/v1/classify", content=png(), headers=PNG_HEADERS))
            for _ in range(burst)
        ]

        async def settled() -> bool:
            depth = metric((await client.get("/metrics")).text, "cxr_queue_depth", model="tiny/1")
            return sum(t.done() for t in tasks) + gate.waiting + depth == burst

        deadline = time.monotonic() + 10
        while not await settled():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        refused = [t.result() for t in tasks if t.done()]
        gate.open()
        responses = await asyncio.gather(*tasks)
    assert refused and all(r.status_code == 503 for r in refused)
    for response in refused:
        assert assert_problem(response, 503)["title"] == "Service overloaded"
        assert response.headers["retry-after"] == "1"
    accepted = [r for r in responses if r.status_code == 200]
    assert 1 <= len(accepted) <= 3 and len(accepted) + len(refused) == burst


async def test_overload_status_can_be_429(model_dir: Path, gate: Gate) -> None:
    settings = settings_for(
        model_dir, max_batch_size=1, queue_capacity=1, max_queue_delay_ms=0, overload_status=429
    )
    async with serve(settings) as client:
        gate.close()
        tasks = [
            asyncio.ensure_future(client.post("/v1/classify", content=png(), headers=PNG_HEADERS))
            for _ in range(4)
        ]
        await wait_until(lambda: sum(t.done() for t in tasks) >= 2)
        gate.open()
        statuses = sorted(r.status_code for r in await asyncio.gather(*tasks))
    assert statuses[0] == 200 and statuses[-1] == 429


async def test_deadline_gives_504_and_the_expired_request_is_not_computed(
    model_dir: Path, gate: Gate
) -> None:
    settings = settings_for(model_dir, max_batch_size=1, max_queue_delay_ms=0, request_timeout_s=0.3)
    async with serve(settings) as client:
        warm_runs = len(gate.sizes)
        gate.close()
        running = asyncio.ensure_future(client.post("/v1/classify", content=png(), headers=PNG_HEADERS))
        await wait_until(lambda: gate.waiting == 1)
        queued = asyncio.ensure_future(client.post("/v1/classify", content=png(seed=1), headers=PNG_HEADERS))
        # Both answered while the model is still held: the deadline answered them, not the model.
        responses = await asyncio.gather(running, queued)
        gate.open()

        async def dropped() -> float:
            return metric(
                (await client.get("/metrics")).text,
                "cxr_images_dropped_total",
                model="tiny/1",
                reason="cancelled",
            )

        deadline = time.monotonic() + 10
        while await dropped() < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
    for response in responses:
        assert "0.3 s deadline" in assert_problem(response, 504)["detail"]
    assert len(gate.sizes) - warm_runs == 1  # only the request already running reached the model


async def test_client_disconnect_drops_its_queued_image(model_dir: Path, gate: Gate) -> None:
    settings = settings_for(model_dir, max_batch_size=1, max_queue_delay_ms=0)
    app = create_app(settings)
    body = png(seed=3)
    disconnect = asyncio.Event()
    sent: list[MutableMapping[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v1/classify", "raw_path": b"/v1/classify", "root_path": "", "query_string": b"",
        "headers": [(b"content-type", b"image/png"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 50000), "server": ("cxr.test", 80),
    }  # fmt: skip
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        await wait_until(lambda: getattr(app.state, "runtime", None) is not None and app.state.runtime.ready)
        warm_runs = len(gate.sizes)
        gate.close()
        running = asyncio.ensure_future(client.post("/v1/classify", content=png(), headers=PNG_HEADERS))
        await wait_until(lambda: gate.waiting == 1)
        gone = asyncio.ensure_future(app(scope, receive, send))
        await wait_until(lambda: app.state.runtime.repository.get().batcher.depth == 1)
        disconnect.set()
        await gone
        gate.open()
        assert (await running).status_code == 200
        await wait_until(lambda: app.state.runtime.repository.get().batcher.depth == 0)
        text = (await client.get("/metrics")).text
    assert sent[0]["status"] == 499
    assert metric(text, "cxr_images_dropped_total", model="tiny/1", reason="cancelled") == 1
    assert len(gate.sizes) - warm_runs == 1  # the gone client's image never reached the model


async def test_shutdown_drains_queued_requests_and_refuses_new_ones(model_dir: Path, gate: Gate) -> None:
    settings = settings_for(model_dir, max_batch_size=1, max_queue_delay_ms=0, drain_timeout_s=10)
    app = create_app(settings)
    manager = LifespanManager(app, shutdown_timeout=20)
    await manager.__aenter__()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
    try:
        await wait_until(lambda: app.state.runtime.ready)
        gate.close()
        tasks = [
            asyncio.ensure_future(client.post("/v1/classify", content=png(), headers=PNG_HEADERS))
            for _ in range(3)
        ]
        await wait_until(lambda: gate.waiting == 1 and app.state.runtime.repository.get().batcher.depth == 2)
        closing = asyncio.ensure_future(manager.__aexit__(None, None, None))
        await wait_until(lambda: app.state.runtime.draining)
        refused = await client.post("/v1/classify", content=png(), headers=PNG_HEADERS)
        not_ready = await client.get("/readyz")
        gate.open()
        responses = await asyncio.gather(*tasks)
        await closing
    finally:
        gate.open()
        await client.aclose()
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert "shutting down" in assert_problem(refused, 503)["detail"]
    assert_problem(not_ready, 503)


async def test_checksum_mismatch_refuses_to_start(model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    model_file = model_dir / "tiny" / "1" / "model.onnx"
    model_file.write_bytes(model_file.read_bytes() + b"\x00")
    app = create_app(settings_for(model_dir))
    with pytest.raises(ModelIntegrityError, match="does not match the model card"):
        async with LifespanManager(app):
            pass
    assert "refusing to start" in caplog.text


async def test_models_listing_versions_and_docs(model_dir: Path) -> None:
    make_tiny_model(model_dir, "tiny", "2", threshold=0.9)
    make_tiny_model(model_dir, "other", "1")
    (model_dir / "default.json").write_text(json.dumps({"model": "tiny"}))
    async with serve(settings_for(model_dir, batch_policy="fixed")) as client:
        listing = (await client.get("/v1/models")).json()
        newest = (await client.post("/v1/classify", content=png(), headers=PNG_HEADERS)).json()["results"][0]
        pinned = await client.post("/v1/classify?model=tiny&version=1", content=png(), headers=PNG_HEADERS)
        other = await client.post("/v1/classify?model=other", content=png(), headers=PNG_HEADERS)
        docs = await client.get("/docs")
        openapi = (await client.get("/openapi.json")).json()
    assert listing["default"] == "tiny" and listing["ready"] is True
    keys = [(m["name"], m["version"], m["default"]) for m in listing["models"]]
    assert keys == [("other", "1", False), ("tiny", "1", False), ("tiny", "2", True)]
    assert all(
        m["providers"] == ["CPUExecutionProvider"] and m["batch_sizes"] == [1, 2, 4, 8]
        for m in listing["models"]
    )
    assert newest["model"]["version"] == "2" and newest["threshold"] == 0.9
    assert pinned.json()["results"][0]["model"]["version"] == "1"
    assert other.json()["results"][0]["model"]["name"] == "other"
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    body_types = openapi["paths"]["/v1/classify"]["post"]["requestBody"]["content"]
    assert {"image/png", "image/jpeg", "application/dicom", "multipart/form-data"} <= set(body_types)


async def test_models_listing_shows_the_batch_policy_chosen_at_warm_up(
    model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.inference.repository")
    async with serve(settings_for(model_dir, max_batch_size=8)) as client:  # the default policy: auto
        (auto,) = (await client.get("/v1/models")).json()["models"]
    async with serve(settings_for(model_dir, max_batch_size=4, batch_policy="fixed")) as client:
        (fixed,) = (await client.get("/v1/models")).json()["models"]
    batching = auto["batching"]
    figures = {int(size): rate for size, rate in batching["warmup_images_per_s"].items()}
    assert batching["policy"] == "auto" and batching["configured_max_batch_size"] == 8
    # Whatever this machine measured, the listing shows the figures and the size the rule takes from them.
    assert 1 in figures and all(rate > 0 for rate in figures.values())
    assert batching["max_batch_size"] == choose_max_batch_size(figures, batching["margin"])
    assert auto["batch_sizes"] == batch_sizes(batching["max_batch_size"])
    assert batching["reason"]
    assert f"batch policy auto, batches up to {batching['max_batch_size']}" in caplog.text
    assert fixed["batching"]["policy"] == "fixed" and fixed["batching"]["max_batch_size"] == 4
    assert sorted(int(size) for size in fixed["batching"]["warmup_images_per_s"]) == [1, 2, 4]
    assert fixed["batch_sizes"] == [1, 2, 4]


async def test_cors_is_off_by_default_and_configurable(model_dir: Path) -> None:
    preflight = {"Origin": "https://viewer.example", "Access-Control-Request-Method": "POST"}
    async with serve(settings_for(model_dir)) as client:
        closed = await client.options("/v1/classify", headers=preflight)
    async with serve(settings_for(model_dir, cors_origins=["https://viewer.example"])) as client:
        opened = await client.options("/v1/classify", headers=preflight)
    assert "access-control-allow-origin" not in closed.headers
    assert opened.headers["access-control-allow-origin"] == "https://viewer.example"
