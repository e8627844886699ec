"""What every request gets from the middleware (service.api.middleware): the request id, HEAD wherever GET answers, and access logs that hold no identifiers or pixels."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.support.app import PNG_HEADERS, metric, png, serve, settings_for
from tests.support.dicoms import IDENTIFYING_FILENAME, PATIENT_ID, PATIENT_NAME, identified_dicom
from tests.support.tinymodel import blob_image, encode

pytestmark = pytest.mark.anyio


async def test_client_request_id_is_kept(model_dir: Path) -> None:
    async with serve(settings_for(model_dir)) as client:
        response = await client.post(
            "/v1/classify", content=png(), headers={**PNG_HEADERS, "X-Request-ID": "trace-42"}
        )
        odd = await client.get("/healthz", headers={"X-Request-ID": "not a token; <script>"})
    assert response.headers["x-request-id"] == "trace-42" == response.json()["request_id"]
    assert odd.headers["x-request-id"] != "not a token"


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
