"""The FastAPI application: `create_app(settings)` wires settings, lifespan, middleware, errors and routes.

Routes: POST /v1/classify (service.api.classify), GET /v1/models, GET /healthz (alive), GET /readyz (every
model loaded and warmed), GET /metrics (Prometheus), the Open Inference Protocol under /v2 (service.api.v2.routes),
OpenAPI at /docs (Swagger UI) and /redoc (service.api.docs: no CDN, so the API docs work offline and behind a
hospital proxy). HEAD works wherever GET does. Research use only.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST

from service.api import classify, docs, problems, web
from service.api.auth import require_api_key
from service.api.deps import runtime_of
from service.api.middleware import HeadAsGet, RequestContextMiddleware
from service.api.schemas import problem_responses
from service.api.v2 import routes as v2
from service.errors import ModelNotReady
from service.inference.batch_policy import BatchPolicy
from service.inference.decision import NOTICE
from service.inference.model import ModelIntegrityError
from service.metrics import Metrics
from service.settings import Settings
from service.state import Runtime

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """A new app; models load in its lifespan (startup fails on a checksum mismatch), warm-up follows."""
    settings = settings or Settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            runtime = Runtime.open(settings, metrics)
        except ModelIntegrityError as error:
            logger.error("refusing to start: %s", error)
            raise
        app.state.runtime = runtime
        runtime.start_warmup()
        try:
            yield
        finally:
            await runtime.aclose()
            logger.info("stopped")

    app = FastAPIOffline(
        title="cxr-covid",
        version="0.1.0",
        summary="COVID-19 chest X-ray classification. RESEARCH USE ONLY: not for diagnosis.",
        description=NOTICE,
        lifespan=lifespan,
        # The pages are service.api.docs'; this mounts the assets they load, from the installed package.
        docs_url=None,
        redoc_url=None,
        static_url=docs.ASSETS,
    )
    app.state.settings = settings
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "X-API-Key", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(HeadAsGet)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)  # outermost: sees every response
    problems.install(app)
    app.include_router(classify.router)
    app.include_router(web.router)
    app.include_router(v2.router)
    app.include_router(docs.router)

    @app.get("/healthz", summary="Liveness", tags=["operations"], responses=problem_responses(503))
    async def healthz(request: Request) -> dict[str, str]:
        runtime = getattr(request.app.state, "runtime", None)
        if runtime is not None and runtime.warmup_error is not None:
            raise ModelNotReady("Model warm-up failed; restart the service.")
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="Readiness: every model loaded and warmed",
        tags=["operations"],
        responses=problem_responses(503),
    )
    async def readyz(request: Request) -> dict[str, Any]:
        runtime = runtime_of(request)
        runtime.check_accepting()
        return {
            "status": "ready",
            "models": {served.key: served.model.providers for served in runtime.repository.all()},
        }

    @app.get(
        "/v1/models",
        summary="Models served, with metadata, providers in use and the batch policy chosen at warm-up",
        dependencies=[Depends(require_api_key)],
        responses=problem_responses(401),
    )
    async def models(request: Request) -> dict[str, Any]:
        runtime = runtime_of(request)
        return {
            "default": runtime.repository.default_name,
            "ready": runtime.ready,
            "models": [
                {**info, "batch_sizes": served.batcher.sizes, "batching": _batching(served.batcher.policy)}
                for info, served in zip(runtime.repository.describe(), runtime.repository.all(), strict=True)
            ],
            "notice": NOTICE,
        }

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def _batching(policy: BatchPolicy | None) -> dict[str, Any] | None:
    """The batch policy and the warm-up figures it came from; None while the model is warming up."""
    return None if policy is None else policy.describe()


def begin_drain(app: FastAPI) -> None:
    """Start draining (server.py calls this on SIGTERM, before uvicorn stops reading requests)."""
    runtime: Runtime | None = getattr(app.state, "runtime", None)
    if runtime is not None:
        runtime.begin_drain()
