"""POST /v1/classify straight from the middleware stack to its handler.

FastAPI resolves a route per request through its router, exception and exit-stack wrappers and the
dependency solver; for the one route that carries the load, that was about 0.6 ms of event-loop CPU per
request (2 cores, 2.5 MB JPEGs, 16 clients), and every bit of it holds the GIL the decoders need. This
middleware matches the route itself and calls the same handler with the same checks: the API key
(service.auth), the query parameters (classify.ClassifyParams, 422 as FastAPI words it), and errors
answered by service.problems. It sits inside RequestContextMiddleware (request id, metrics, access log)
and CORS, so everything around the handler is unchanged; every other request goes on to FastAPI, whose
declaration of the route still gives the OpenAPI schema. A dependency added to that declaration would
apply on FastAPI's path only: add it here too (tests/service/test_app.py compares the two paths' answers).
"""

from __future__ import annotations

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette._utils import get_route_path
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from service import problems
from service.auth import check_request
from service.classify import PATH, ClassifyParams, classify, router


class DirectClassify:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.route = next(
            route
            for route in router.routes
            if isinstance(route, APIRoute) and route.path == PATH and "POST" in (route.methods or ())
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or get_route_path(scope) != PATH:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route  # as the router would set it: the metrics label the route template
        request = Request(scope, receive)
        try:
            await check_request(request)
            try:
                params = ClassifyParams.model_validate(dict(request.query_params))
            except ValidationError as error:
                raise RequestValidationError(
                    [{**problem, "loc": ("query", *problem["loc"])} for problem in error.errors()]
                ) from None
            response = await classify(request, params)
        except Exception as error:  # answer() raises again what no problem handler covers
            response = await problems.answer(request, error)
        await response(scope, receive, send)
