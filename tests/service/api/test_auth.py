"""The API key gate (service.api.auth): missing or wrong key 401, X-API-Key or bearer, sha256 keys."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.support.app import PNG_HEADERS, assert_problem, png, serve, settings_for

pytestmark = pytest.mark.anyio


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
