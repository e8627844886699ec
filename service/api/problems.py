"""The one place errors become HTTP responses, and the one place that decides their body by path.

Everywhere but `/v2`: RFC 9457 problem details, `{"type", "title", "status", "detail", "instance",
"request_id"}` as `application/problem+json`; `detail` is always a string.
Under `/v2` (the Open Inference Protocol): `{"error": "<detail>"}` as `application/json`, the body that
Triton's and KServe's clients read (tritonclient raises a decoding error, and loses the message, on any
other body), with 400 where /v1 says 422, as Triton answers every invalid argument.
Tracebacks never reach the client; server faults are logged with theirs by service.api.middleware, which
also answers them here with a 500.
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


V2_PREFIX = "/v2"
_V2_STATUS = {422: 400}
"""/v1 statuses the protocol words differently: Triton answers 400 for every invalid argument."""


def is_v2(path: str) -> bool:
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


def error_response(
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
    """The error answer for a request to path `instance`: the protocol's body under /v2, else a problem
    (with `extensions` as members of its own)."""
    if is_v2(instance):
        # The request id stays in the X-Request-ID header: the protocol's body has one field.
        return JSONResponse({"error": detail}, status_code=_V2_STATUS.get(status, status), headers=headers)
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
    return error_response(
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
    return error_response(
        status=422,
        title="Invalid parameter",
        detail=detail or "The request parameters are not valid.",
        instance=request.url.path,
        request_id=_request_id(request),
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    detail = exc.detail if isinstance(exc, HTTPException) else ""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:  # a status code HTTPStatus does not name
        title = "Error"
    headers = dict(exc.headers or {}) if isinstance(exc, HTTPException) else None
    return error_response(
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
    """Register the error handlers on an app."""
    for kind, handler in _HANDLERS:
        app.add_exception_handler(kind, handler)
