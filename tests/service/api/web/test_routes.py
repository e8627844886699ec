"""The page's routes over ASGI (no browser): assets with their content types and security headers, nothing
fetched from elsewhere, the allowlist, revalidation, and /v1/decoded (the heatmap's pixel grid, API keys,
problems)."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from service.api.web import SECURITY_HEADERS
from tests.support.app import PNG_HEADERS, png, serve, settings_for
from tests.support.dicoms import identified_dicom
from tests.support.tinymodel import blob_image, encode

pytestmark = pytest.mark.anyio

ASSETS = {
    "/": "text/html; charset=utf-8",
    "/static/app.js": "text/javascript; charset=utf-8",
    "/static/style.css": "text/css; charset=utf-8",
}


async def test_assets_have_types_security_headers_and_no_outside_urls(model_dir: Path) -> None:
    async with serve(settings_for(model_dir)) as client:
        for path, media_type in ASSETS.items():
            response = await client.get(path)
            assert response.status_code == 200
            assert response.headers["content-type"] == media_type
            for name, value in SECURITY_HEADERS.items():
                assert response.headers[name] == value
            # Offline: no CDN, no font or script from another origin.
            assert not re.search(r"(https?:)?//[a-z0-9]", response.text)
            again = await client.get(path, headers={"If-None-Match": response.headers["etag"]})
            assert again.status_code == 304 and again.content == b""
        page = (await client.get("/")).text
        assert 'src="/static/app.js"' in page and 'href="/static/style.css"' in page
    csp = SECURITY_HEADERS["Content-Security-Policy"]
    assert "default-src 'self'" in csp and "img-src 'self' data: blob:" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp


@pytest.mark.parametrize("name", ["index.html", "nope.js", "..%2Fweb.py", "%2E%2E%2Fapp.py"])
async def test_only_listed_assets_are_served(model_dir: Path, name: str) -> None:
    async with serve(settings_for(model_dir), wait_ready=False) as client:
        response = await client.get(f"/static/{name}")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"


async def test_decoded_image_is_the_heatmap_grid(model_dir: Path) -> None:
    jpeg = encode(blob_image(size=(480, 640), centre=(0.3, 0.4)), ".jpg")
    dicom = identified_dicom(blob_image(size=(300, 260)))
    async with serve(settings_for(model_dir)) as client:
        for data in (jpeg, dicom):
            answer = await client.post("/v1/classify?heatmap=true", files={"file": data})
            decoded = await client.post(
                "/v1/decoded", content=data, headers={"Content-Type": "application/octet-stream"}
            )
            assert answer.status_code == 200 and decoded.status_code == 200
            assert decoded.headers["content-type"] == "image/png"
            heatmap = answer.json()["results"][0]["heatmap"]
            image = cv2.imdecode(np.frombuffer(decoded.content, np.uint8), cv2.IMREAD_UNCHANGED)
            levels = cv2.imdecode(
                np.frombuffer(base64.b64decode(heatmap["data"]), np.uint8), cv2.IMREAD_UNCHANGED
            )
            assert image.dtype == np.uint8 and image.ndim == 2
            assert image.shape == levels.shape == (heatmap["height"], heatmap["width"])
        assert image.shape == (300, 260)  # small DICOM: not enlarged
        corrupt = await client.post("/v1/decoded", content=png()[:100], headers=PNG_HEADERS)
        assert corrupt.status_code == 400
        assert corrupt.headers["content-type"] == "application/problem+json"
        assert corrupt.json()["title"] == "Invalid image"
        two = await client.post("/v1/decoded", files=[("file", png()), ("file", png())])
        assert two.status_code == 400


async def test_decoded_needs_the_api_key_the_api_needs(model_dir: Path) -> None:
    async with serve(settings_for(model_dir, api_keys=["s3cret"])) as client:
        page = await client.get("/")
        refused = await client.post("/v1/decoded", content=png(), headers=PNG_HEADERS)
        allowed = await client.post(
            "/v1/decoded", content=png(), headers={**PNG_HEADERS, "X-API-Key": "s3cret"}
        )
    assert page.status_code == 200  # the page holds no data; what it calls is what needs the key
    assert refused.status_code == 401 and refused.json()["title"] == "Unauthorized"
    assert allowed.status_code == 200
