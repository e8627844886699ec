"""The real app through its lifespan (httpx over ASGI): classification, batching, every error status,
API keys, readiness, deadlines, overload, disconnects, drain, and what the logs may say."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import resource
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from asgi_lifespan import LifespanManager

from service.api.app import create_app
from service.inference.batch_policy import choose_max_batch_size
from service.inference.batcher import batch_sizes
from service.inference.model import ModelIntegrityError
from tests.support.app import PNG_HEADERS, Gate, metric, png, serve, settings_for, wait_until
from tests.support.dicoms import IDENTIFYING_FILENAME, PATIENT_ID, PATIENT_NAME, identified_dicom
from tests.support.tinymodel import blob_image, encode, make_tiny_model, png_bomb

pytestmark = pytest.mark.anyio


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail", "instance"} <= set(body)
    assert isinstance(body["detail"], str) and body["detail"]
    assert "Traceback" not in response.text
    assert body["request_id"] == response.headers["x-request-id"]
    return body


async def test_png_raw_body(model_dir: Path) -> None:
    async with serve(settings_for(model_dir)) as client:
        response = await client.post("/v1/classify", content=png(), headers=PNG_HEADERS)
    assert response.status_code == 200
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"]
    assert "Research use only" in body["notice"]
    (result,) = body["results"]
    card = json.loads((model_dir / "tiny" / "1" / "card.json").read_text())
    assert result["model"] == {"name": "tiny", "version": "1", "sha256": card["files"]["model.onnx"]}
    assert set(result["probabilities"]) == {"non-covid", "covid"}
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    expected = "covid" if result["probabilities"]["covid"] >= result["threshold"] else "non-covid"
    assert result["label"] == expected
    assert result["image"] == {"format": "png", "width": 256, "height": 256, "lung_crop": "off"}
    timing = result["timing"]
    assert 0 <= timing["queue_ms"] <= timing["total_ms"] and timing["inference_ms"] >= 0
    assert "heatmap" not in result


async def test_client_request_id_is_kept(model_dir: Path) -> None:
    async with serve(settings_for(model_dir)) as client:
        response = await client.post(
            "/v1/classify", content=png(), headers={**PNG_HEADERS, "X-Request-ID": "trace-42"}
        )
        odd = await client.get("/healthz", headers={"X-Request-ID": "not a token; <script>"})
    assert response.headers["x-request-id"] == "trace-42" == response.json()["request_id"]
    assert odd.headers["x-request-id"] != "not a token"


async def test_multipart_png_jpeg_dicom_in_order(model_dir: Path) -> None:
    image = blob_image()
    files = [
        ("file", ("a.png", encode(image), "image/png")),
        ("file", ("b.jpg", encode(image, ".jpg"), "image/jpeg")),
        ("file", ("c.dcm", identified_dicom(image), "application/dicom")),
        ("file", ("d.bin", encode(image), "application/octet-stream")),
    ]
    async with serve(settings_for(model_dir)) as client:
        response = await client.post("/v1/classify", files=files)
        dicom = await client.post(
            "/v1/classify", content=identified_dicom(image), headers={"Content-Type": "application/dicom"}
        )
        jpeg = await client.post(
            "/v1/classify", content=encode(image, ".jpg"), headers={"Content-Type": "image/jpeg"}
        )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["index"] for r in results] == [0, 1, 2, 3]
    assert [r["image"]["format"] for r in results] == ["png", "jpeg", "dicom", "png"]
    assert results[2]["flags"] == {"view": "PA"}
    assert dicom.status_code == 200 and dicom.json()["results"][0]["image"]["format"] == "dicom"
    assert jpeg.status_code == 200 and jpeg.json()["results"][0]["image"]["format"] == "jpeg"
    # Same picture through PNG and 12-bit DICOM (min/max windowing shifts grey levels a little): same answer.
    assert results[2]["label"] == results[0]["label"]
    assert results[2]["probabilities"]["covid"] == pytest.approx(
        results[0]["probabilities"]["covid"], abs=0.05
    )


async def test_bright_blob_raises_covid_and_heatmap_peaks_on_it(model_dir: Path) -> None:
    async with serve(settings_for(model_dir)) as client:
        plain = await client.post("/v1/classify", content=png(centre=None), headers=PNG_HEADERS)
        blob = await client.post(
            "/v1/classify?heatmap=true", content=png(centre=(0.25, 0.7), radius=0.18), headers=PNG_HEADERS
        )
    assert plain.json()["results"][0]["label"] == "non-covid"
    result = blob.json()["results"][0]
    assert result["label"] == "covid"
    assert result["probabilities"]["covid"] > plain.json()["results"][0]["probabilities"]["covid"]
    heatmap = result["heatmap"]
    assert heatmap["media_type"] == "image/png" and heatmap["cam_max"] > 0
    pixels = cv2.imdecode(np.frombuffer(base64.b64decode(heatmap["data"]), np.uint8), cv2.IMREAD_UNCHANGED)
    assert pixels is not None
    assert pixels.shape == (heatmap["height"], heatmap["width"]) == (256, 256)
    y, x = np.unravel_index(int(pixels.argmax()), pixels.shape)
    assert abs(x - 0.25 * 256) < 40 and abs(y - 0.7 * 256) < 40


async def test_concurrent_requests_batch_and_match_single_image_results(model_dir: Path, gate: Gate) -> None:
    images = [png(centre=(0.3 + 0.1 * i, 0.5), seed=i) for i in range(5)]
    settings = settings_for(model_dir, max_batch_size=8, max_queue_delay_ms=20, batch_policy="fixed")
    async with serve(settings) as client:
        gate.close()
        first = asyncio.ensure_future(client.post("/v1/classify", content=images[0], headers=PNG_HEADERS))
        await wait_until(lambda: gate.waiting == 1)
        rest = [
            asyncio.ensure_future(client.post("/v1/classify", content=i, headers=PNG_HEADERS))
            for i in images[1:]
        ]

        async def depth() -> float:
            return metric((await client.get("/metrics")).text, "cxr_queue_depth", model="tiny/1")

        deadline = time.monotonic() + 10
        while await depth() < 4:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.005)
        gate.open()
        batched = [r.json()["results"][0] for r in await asyncio.gather(first, *rest)]
        single = [
            (await client.post("/v1/classify", content=i, headers=PNG_HEADERS)).json()["results"][0]
            for i in images[1:]
        ]
        text = (await client.get("/metrics")).text
    assert [r["batch_size"] for r in batched] == [1, 4, 4, 4, 4]
    assert all(r["batch_size"] == 1 for r in single)
    for together, alone in zip(batched[1:], single, strict=True):
        assert together["probabilities"] == alone["probabilities"]  # identical, not just close
    # Post-warm-up: one batch of 1, one of 4 (padded to 4), then four of 1.
    assert metric(text, "cxr_batch_size_count", model="tiny/1") == 6
    assert metric(text, "cxr_batch_size_sum", model="tiny/1") == 9
    assert metric(text, "cxr_batch_size_bucket", model="tiny/1", le="1.0") == 5  # so one batch held > 1
    assert (
        metric(text, "cxr_images_classified_total", model="tiny/1", label="covid")
        + metric(text, "cxr_images_classified_total", model="tiny/1", label="non-covid")
        == 9
    )
    assert metric(text, "cxr_http_requests_total", method="POST", route="/v1/classify", status="200") == 9
    assert metric(text, "cxr_queue_seconds_count", model="tiny/1") == 9
    assert metric(text, "cxr_inference_seconds_count", model="tiny/1") == 6
    assert metric(text, "cxr_http_request_duration_seconds_count", route="/v1/classify") == 9


async def test_results_are_identical_whatever_the_batch_policy(model_dir: Path, gate: Gate) -> None:
    images = [png(centre=(0.3 + 0.1 * i, 0.5), seed=i) for i in range(5)]
    policies: dict[str, dict[str, Any]] = {
        "auto": {"max_batch_size": 8},
        "fixed 8": {"max_batch_size": 8, "batch_policy": "fixed"},
        "fixed 1": {"max_batch_size": 1, "batch_policy": "fixed"},
    }
    answers: dict[str, list[dict[str, Any]]] = {}
    for name, overrides in policies.items():
        async with serve(settings_for(model_dir, **overrides)) as client:
            gate.close()  # the first image holds the worker while the other four queue behind it
            first = asyncio.ensure_future(client.post("/v1/classify", content=images[0], headers=PNG_HEADERS))
            await wait_until(lambda: gate.waiting == 1)
            rest = [
                asyncio.ensure_future(client.post("/v1/classify", content=i, headers=PNG_HEADERS))
                for i in images[1:]
            ]
            deadline = time.monotonic() + 10
            while metric((await client.get("/metrics")).text, "cxr_queue_depth", model="tiny/1") < 4:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.005)
            gate.open()
            answers[name] = [r.json()["results"][0] for r in await asyncio.gather(first, *rest)]
    assert [r["batch_size"] for r in answers["fixed 8"]] == [1, 4, 4, 4, 4]
    assert [r["batch_size"] for r in answers["fixed 1"]] == [1, 1, 1, 1, 1]
    for name in ("auto", "fixed 1"):
        for result, reference in zip(answers[name], answers["fixed 8"], strict=True):
            assert result["probabilities"] == reference["probabilities"], name  # identical, not just close
            assert result["label"] == reference["label"]


async def test_undecodable_and_empty_images_are_400(model_dir: Path) -> None:
    truncated = png()[:200]
    async with serve(settings_for(model_dir)) as client:
        empty = await client.post("/v1/classify", content=b"", headers=PNG_HEADERS)
        broken = await client.post("/v1/classify", content=truncated, headers=PNG_HEADERS)
        mislabelled = await client.post("/v1/classify", content=png(), headers={"Content-Type": "image/jpeg"})
        multipart = await client.post(
            "/v1/classify",
            files=[("file", ("a.png", png(), "image/png")), ("file", ("b.png", truncated, "image/png"))],
        )
        malformed = await client.post(
            "/v1/classify", content=b"--x\r\nnonsense", headers={"Content-Type": "multipart/form-data"}
        )
    assert "empty" in assert_problem(empty, 400)["detail"]
    assert assert_problem(broken, 400)["title"] == "Invalid image"
    assert_problem(mislabelled, 400)
    assert assert_problem(multipart, 400)["detail"].startswith("Image 2 of 2:")
    assert assert_problem(malformed, 400)["title"] == "Malformed request"


async def test_unsupported_types_are_415(model_dir: Path) -> None:
    async with serve(settings_for(model_dir)) as client:
        text = await client.post("/v1/classify", content=b"hello", headers={"Content-Type": "text/plain"})
        curl_default = await client.post(
            "/v1/classify", content=png(), headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        gif = await client.post(
            "/v1/classify", content=b"GIF89a" + b"\x00" * 64, headers={"Content-Type": "image/png"}
        )
    assert_problem(text, 415)
    assert "image/png" in assert_problem(curl_default, 415)["detail"]
    assert_problem(gif, 415)


async def test_invalid_parameters_are_422_and_unknown_model_404(model_dir: Path) -> None:
    async with serve(settings_for(model_dir)) as client:
        heatmap = await client.post("/v1/classify?heatmap=maybe", content=png(), headers=PNG_HEADERS)
        name = await client.post("/v1/classify?model=../etc", content=png(), headers=PNG_HEADERS)
        no_files = await client.post("/v1/classify", data={"note": "x"}, files={"empty": (None, b"")})
        unknown = await client.post("/v1/classify?model=other", content=png(), headers=PNG_HEADERS)
        version = await client.post("/v1/classify?model=tiny&version=9", content=png(), headers=PNG_HEADERS)
        route = await client.get(
            "/v1/nothing"
        )  # under /v2 the protocol's body (tests/service/api/v2/test_routes.py)
        method = await client.get("/v1/classify")
    assert "heatmap" in assert_problem(heatmap, 422)["detail"]
    assert "model" in assert_problem(name, 422)["detail"]
    assert_problem(no_files, 422)
    assert "available: tiny" in assert_problem(unknown, 404)["detail"]
    assert_problem(version, 404)
    assert_problem(route, 404)
    assert_problem(method, 405)


async def test_body_over_the_byte_limit_is_413_while_reading(model_dir: Path) -> None:
    big = png(size=(512, 512))
    assert len(big) > 20_000

    async def chunked() -> Any:  # no Content-Length: the limit must hold while the body streams in
        for start in range(0, len(big), 4096):
            yield big[start : start + 4096]

    async with serve(settings_for(model_dir, max_upload_bytes=20_000)) as client:
        declared = await client.post("/v1/classify", content=big, headers=PNG_HEADERS)
        streamed = await client.post("/v1/classify", content=chunked(), headers=PNG_HEADERS)
        multipart = await client.post("/v1/classify", files=[("file", ("a.png", big, "image/png"))])
        small = await client.post("/v1/classify", content=png(size=(64, 64)), headers=PNG_HEADERS)
    assert "20000 bytes" in assert_problem(declared, 413)["detail"]
    assert_problem(streamed, 413)
    assert_problem(multipart, 413)
    assert small.status_code == 200


async def test_decompression_bomb_is_413_fast_without_allocating(model_dir: Path) -> None:
    bomb = png_bomb()
    assert len(bomb) < 200
    async with serve(settings_for(model_dir)) as client:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        response = await client.post("/v1/classify", content=bomb, headers=PNG_HEADERS)
        multipart = await client.post("/v1/classify", files=[("file", ("bomb.png", bomb, "image/png"))])
        grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert "50000x50000" in assert_problem(response, 413)["detail"]
    assert_problem(multipart, 413)
    # Refused from the header, before decoding: the peak memory shows it (no wall-clock bound: CI is busy).
    assert grown_kib < 100 * 1024  # the 2.5 GB the header declares was never allocated


async def test_api_key_gate(model_dir: Path) -> None:
    hashed = "sha256:" + hashlib.sha256(b"second-key").hexdigest()
    async with serve(settings_for(model_dir, api_keys=["first-key", hashed])) as client:
        missing = await client.post("/v1/classify", content=png(), headers=PNG_HEADERS)
        wrong = await client.post("/v1/classify", content=png(), headers={**PNG_HEADERS, "X-API-Key": "nope"})
        bearer = await client.post(
            "/v1/classify", content=png(), headers={**PNG_HEADERS, "Authorization": "Bearer first-key"}
        )
        hashed_ok = await client.post(
            "/v1/classify", content=png(), headers={**PNG_HEADERS, "X-API-Key": "second-key"}
        )
        not_the_hash = await client.post(
            "/v1/classify", content=png(), headers={**PNG_HEADERS, "X-API-Key": hashed}
        )
        models = await client.get("/v1/models")
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
    assert assert_problem(missing, 401)["title"] == "Unauthorized"
    assert missing.headers["www-authenticate"].startswith("Bearer")
    assert_problem(wrong, 401)
    assert bearer.status_code == 200 and hashed_ok.status_code == 200
    assert_problem(not_the_hash, 401)
    assert_problem(models, 401)
    assert health.status_code == 200 and ready.status_code == 200


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


async def test_logs_hold_no_identifiers_or_pixels(model_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    image = blob_image()
    dicom = identified_dicom(image)
    async with serve(settings_for(model_dir)) as client:
        ok = await client.post(
            "/v1/classify?heatmap=true",
            files=[
                ("file", (IDENTIFYING_FILENAME, encode(image), "image/png")),
                ("file", ("x.dcm", dicom, "application/dicom")),
            ],
        )
        raw = await client.post("/v1/classify", content=dicom, headers={"Content-Type": "application/dicom"})
        bad = await client.post(
            "/v1/classify", files=[("file", (IDENTIFYING_FILENAME, dicom[:300], "application/dicom"))]
        )
    assert ok.status_code == 200 and raw.status_code == 200 and bad.status_code == 400
    text = caplog.text
    assert "formats=png,dicom" in text and "sizes=256x256,256x256" in text  # sizes and types are logged
    for secret in (PATIENT_NAME, "Doe", "Janet", PATIENT_ID, "31337", IDENTIFYING_FILENAME, "iVBOR"):
        assert secret not in text
    assert max(len(record.getMessage()) for record in caplog.records) < 1000  # no pixel dumps


async def test_server_fault_is_a_500_problem_with_the_traceback_only_in_the_log(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async with serve(settings_for(model_dir)) as client:

        def broken(self: object, batch: np.ndarray) -> None:
            raise RuntimeError("simulated onnxruntime failure")

        monkeypatch.setattr("service.inference.model.OnnxModel.run", broken)
        response = await client.post("/v1/classify", content=png(), headers=PNG_HEADERS)
        monkeypatch.undo()
        recovered = await client.post("/v1/classify", content=png(), headers=PNG_HEADERS)
    body = assert_problem(response, 500)
    assert "simulated" not in body["detail"]
    assert "Traceback" in caplog.text and "simulated onnxruntime failure" in caplog.text
    assert body["request_id"] in caplog.text
    assert recovered.status_code == 200  # the batcher survives a failed batch


async def test_cors_is_off_by_default_and_configurable(model_dir: Path) -> None:
    preflight = {"Origin": "https://viewer.example", "Access-Control-Request-Method": "POST"}
    async with serve(settings_for(model_dir)) as client:
        closed = await client.options("/v1/classify", headers=preflight)
    async with serve(settings_for(model_dir, cors_origins=["https://viewer.example"])) as client:
        opened = await client.options("/v1/classify", headers=preflight)
    assert "access-control-allow-origin" not in closed.headers
    assert opened.headers["access-control-allow-origin"] == "https://viewer.example"


async def test_classify_parameters_and_keys_answer_as_declared(model_dir: Path) -> None:
    """Query parameters and API keys on POST /v1/classify: each case's status, and the route template metric."""
    cases: list[tuple[str, dict[str, str]]] = [
        ("/v1/classify", {}),
        ("/v1/classify?heatmap=maybe", {}),
        ("/v1/classify?model=../etc&version=1", {}),
        ("/v1/classify?model=other", {}),
        ("/v1/classify?model=tiny&version=9", {}),
        # the last value wins; unknown names are ignored
        ("/v1/classify?heatmap=yes&heatmap=0&unknown=1", {}),
        ("/v1/classify", {"X-API-Key": "nope"}),
        ("/v1/classify", {"Authorization": "Basic first-key"}),
        ("/v1/classify", {"Authorization": "Bearer first-key"}),
    ]
    statuses = []
    async with serve(settings_for(model_dir, api_keys=["first-key"])) as client:
        for url, headers in cases:
            key = headers or {"X-API-Key": "first-key"}
            response = await client.post(url, content=png(), headers={**PNG_HEADERS, **key})
            statuses.append(response.status_code)
            expected = "application/json" if response.status_code == 200 else "application/problem+json"
            assert response.headers["content-type"] == expected, url
        text = (await client.get("/metrics")).text
    assert statuses == [200, 422, 422, 404, 404, 200, 401, 401, 200]
    assert metric(text, "cxr_http_requests_total", method="POST", route="/v1/classify", status="200") == 3


async def test_head_answers_wherever_get_does_with_no_body(model_dir: Path) -> None:
    """HEAD on /healthz and / answered 405 (FastAPI registers GET routes for GET alone)."""
    paths = ["/healthz", "/readyz", "/", "/static/app.js", "/v2/health/live", "/v2/health/ready", "/v2"]
    paths += ["/v2/models/tiny", "/v1/models", "/openapi.json", "/docs", "/redoc", "/metrics"]
    async with serve(settings_for(model_dir)) as client:
        for path in paths:
            get = await client.get(path)
            head = await client.head(path)
            assert (head.status_code, head.content) == (get.status_code, b""), path
            assert head.headers["content-type"] == get.headers["content-type"], path
            if path != "/metrics":  # its counters move between the two requests
                assert head.headers["content-length"] == str(len(get.content)), path
        missing = await client.head("/v2/models/no-such-model")
        post_only = await client.head("/v1/classify")
        metrics = (await client.get("/metrics")).text
    assert missing.status_code == 404 and missing.content == b""
    assert post_only.status_code == 405  # HEAD where GET works, not where it does not
    # Logged and counted as HEAD, under the route's template.
    assert metric(metrics, "cxr_http_requests_total", method="HEAD", route="/healthz", status="200") == 1
