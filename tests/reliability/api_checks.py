"""Schemathesis hooks for the API fuzzing (loaded through SCHEMATHESIS_HOOKS by tests.reliability.api_fuzz):
the API's own contract beyond what the OpenAPI schema states."""

from __future__ import annotations

from typing import Any

import schemathesis

PROBLEM_JSON = "application/problem+json"


@schemathesis.check
def errors_are_problem_json(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx/5xx is an RFC 9457 problem whose `status` matches and whose `detail` is a string, with no
    traceback in it (service.problems)."""
    if response.status_code < 400:
        return None
    content_type = response.headers.get("content-type", [""])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    if not content_type.startswith(PROBLEM_JSON):
        raise AssertionError(f"{response.status_code} answered as {content_type!r}, not {PROBLEM_JSON}")
    body = response.json()
    if body.get("status") != response.status_code or not isinstance(body.get("detail"), str):
        raise AssertionError(f"problem body does not match its status: {body!r}")
    if "Traceback" in response.text:
        raise AssertionError("a traceback reached the client")
    return None
