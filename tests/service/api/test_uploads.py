"""Request bodies: the byte limit enforced while the body streams in (service.api.uploads)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.app import PNG_HEADERS, assert_problem, png, serve, settings_for

pytestmark = pytest.mark.anyio


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
