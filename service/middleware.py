"""Pure ASGI middleware around every HTTP request: request id, access log line, request metrics, and the
last-resort 500 for server faults.

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

from service.metrics import Metrics
from service.problems import problem

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
            response = problem(
                status=500,
                title="Internal error",
                detail="The server failed to process the request; the fault is logged with its request id.",
                instance=scope.get("path", ""),
                request_id=request_id,
            )
            await response(scope, receive, send_with_id)
        finally:
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
