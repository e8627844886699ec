"""Schemathesis hooks for the API fuzzing (loaded through SCHEMATHESIS_HOOKS by tests.reliability.api_fuzz):
the API's own contract beyond what the OpenAPI schema states."""

from __future__ import annotations

import os
from typing import Any

import schemathesis

from service.api.problems import is_v2

PROBLEM_JSON = "application/problem+json"
FUZZ_MODEL = "CXR_FUZZ_MODEL"
"""When set (tests.reliability.api_fuzz), every generated model name is this served model, version 1, so the
fuzzing reaches what is behind the model lookup (the /v2 body parser) instead of 404 for random names."""


@schemathesis.hook
def map_path_parameters(context: Any, path_parameters: dict[str, Any]) -> dict[str, Any]:
    model = os.environ.get(FUZZ_MODEL)
    if not model or path_parameters is None:
        return path_parameters
    named = {"name": model, "version": "1"}
    return {key: named.get(key, value) for key, value in path_parameters.items()}


def _path(case: Any) -> str:
    return str(getattr(case, "formatted_path", None) or case.path)


@schemathesis.check
def errors_are_problem_json(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx/5xx is an RFC 9457 problem whose `status` matches and whose `detail` is a string, with no
    traceback in it; under /v2 it is the Open Inference Protocol's `{"error": "..."}` instead
    (service.api.problems)."""
    if response.status_code < 400:
        return None
    content_type = response.headers.get("content-type", [""])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    if "Traceback" in response.text:
        raise AssertionError("a traceback reached the client")
    if is_v2(_path(case)):
        if not content_type.startswith("application/json"):
            raise AssertionError(
                f"/v2 {response.status_code} answered as {content_type!r}, not application/json"
            )
        body = response.json()
        if not (isinstance(body, dict) and list(body) == ["error"] and isinstance(body["error"], str)):
            raise AssertionError(f"/v2 error body is not {{'error': str}}: {body!r}")
        return None
    if not content_type.startswith(PROBLEM_JSON):
        raise AssertionError(f"{response.status_code} answered as {content_type!r}, not {PROBLEM_JSON}")
    body = response.json()
    if body.get("status") != response.status_code or not isinstance(body.get("detail"), str):
        raise AssertionError(f"problem body does not match its status: {body!r}")
    return None
