"""Pure ASGI middleware around every HTTP request: request id, access log line, request metrics, and the
last-resort 500 for server faults; and HEAD answered wherever GET is.

Pure ASGI (not BaseHTTPMiddleware) so it adds no task per request and never buffers bodies. The access log
carries the route template, status, duration and body size: never query values, file names or pixels.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.problems import error_response
from service.metrics import Metrics

logger = logging.getLogger(__name__)

_CLIENT_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_PROBES = frozenset({"/healthz", "/readyz", "/metrics"})
"""Polled every few seconds by orchestrators and scrapers: logged at DEBUG only."""


def _route(scope: Scope) -> str:
    """The matched route's template, or the path of the few plain routes (/docs, /openapi.json);
    'unmatched' when no route matched, so that scanners cannot grow the metric's label set."""
    path = getattr(scope.get("route"), "path", None)
    if path:
        return str(path)
    return str(scope.get("path", "")) if scope.get("endpoint") is not None else "unmatched"


def _request_id(scope: Scope) -> str:
    """The client's X-Request-ID when it is a sane token (for tracing across services), else a new UUID."""
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            candidate = str(value.decode("latin-1"))
            if _CLIENT_ID.fullmatch(candidate):
                return candidate
    return uuid.uuid4().hex


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id
        started = time.monotonic()
        status = 0
        self.metrics.in_progress.inc()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                MutableHeaders(scope=message)["X-Request-ID"] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            # The client went away while its body was still being read: no fault here, nobody to answer,
            # and nothing was queued for the model. 499 (nginx's "client closed request") in log and metrics.
            status = status or 499
        except Exception:
            logger.exception("server fault request_id=%s %s %s", request_id, scope["method"], _route(scope))
            if status:  # the response already started: nothing sane can be sent any more
                raise
            response = error_response(
                status=500,
                title="Internal error",
                detail="The server failed to process the request; the fault is logged with its request id.",
                instance=scope.get("path", ""),
                request_id=request_id,
            )
            await response(scope, receive, send_with_id)
        finally:
            self.metrics.in_progress.dec()
            seconds = time.monotonic() - started
            route = _route(scope)
            self.metrics.requests.labels(method=scope["method"], route=route, status=str(status or 500)).inc()
            self.metrics.request_seconds.labels(route=route).observe(seconds)
            length = next((v.decode() for k, v in scope.get("headers", []) if k == b"content-length"), "-")
            logger.log(
                logging.DEBUG if route in _PROBES else logging.INFO,
                "request_id=%s %s %s status=%s bytes_in=%s ms=%.1f%s",
                request_id,
                scope["method"],
                route,
                status or 500,
                length,
                seconds * 1000.0,
                f" {detail}" if (detail := scope["state"].get("log_detail")) else "",
            )


class HeadAsGet:
    """HEAD wherever GET works (RFC 9110 9.3.2): the request is routed as a GET, and the answer goes out
    with the GET's status and headers (Content-Length included) and no body.

    FastAPI registers GET routes for GET alone (405 for HEAD, which probes, curl -I and link checkers
    send); doing it here covers every GET route, present and future, without listing HEAD operations in
    the OpenAPI schema. The app below sees a copy of the scope, so the server still knows the request is
    a HEAD; what routing adds to the copy is handed back for the access log and the metrics labels.
    """

    _ROUTING_KEYS = ("route", "endpoint", "path_params")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return
        as_get = {**scope, "method": "GET"}

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        try:
            await self.app(as_get, receive, without_body)
        finally:
            scope.update({key: as_get[key] for key in self._ROUTING_KEYS if key in as_get})
