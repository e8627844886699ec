"""RFC 9457 problem details: the one place errors become HTTP responses.

Body: `{"type", "title", "status", "detail", "instance", "request_id"}` as `application/problem+json`.
`detail` is always a string. Tracebacks never reach the client; server faults are logged with theirs
by service.middleware, which also answers them with a 500 problem.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from service.errors import CxrError

PROBLEM_JSON = "application/problem+json"


def problem(
    *,
    status: int,
    title: str,
    detail: str,
    instance: str,
    request_id: str | None,
    type_uri: str = "about:blank",
    headers: dict[str, str] | None = None,
    extensions: dict[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        **(extensions or {}),
        "type": type_uri,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
    }
    if request_id:
        body["request_id"] = request_id
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_JSON)


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


async def _cxr_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, CxrError):  # registered for CxrError only; keeps the handler signature exact
        raise exc
    return problem(
        status=exc.status,
        title=exc.title,
        detail=exc.detail,
        instance=request.url.path,
        request_id=_request_id(request),
        type_uri=exc.type_uri,
        headers=exc.headers,
        extensions=exc.extensions,
    )


def _location(loc: Any) -> str:
    return ".".join(str(part) for part in loc) if isinstance(loc, list | tuple) else str(loc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    # Only locations and messages: the offending input may be anything, and is not echoed back.
    detail = "; ".join(
        f"{_location(error.get('loc', ()))}: {error.get('msg', 'invalid')}" for error in errors
    )
    return problem(
        status=422,
        title="Invalid parameter",
        detail=detail or "The request parameters are not valid.",
        instance=request.url.path,
        request_id=_request_id(request),
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else ""
    title = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    headers = dict(exc.headers or {}) if isinstance(exc, HTTPException) else None
    return problem(
        status=status,
        title=title,
        detail=str(detail) if detail else title,
        instance=request.url.path,
        request_id=_request_id(request),
        headers=headers,
    )


_HANDLERS = (
    (CxrError, _cxr_error),
    (RequestValidationError, _validation_error),
    (HTTPException, _http_error),
)


def install(app: FastAPI) -> None:
    """Register the problem+json handlers on an app."""
    for kind, handler in _HANDLERS:
        app.add_exception_handler(kind, handler)
