"""POST /v1/classify through the real app (lifespan, httpx over ASGI): images in every accepted form, batching, the answer's fields, and the 4xx answers for bad input."""

from __future__ import annotations

import asyncio
import base64
import json
import resource
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests.support.app import PNG_HEADERS, Gate, assert_problem, metric, png, serve, settings_for, wait_until
from tests.support.dicoms import identified_dicom
from tests.support.tinymodel import blob_image, encode, png_bomb

pytestmark = pytest.mark.anyio


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
