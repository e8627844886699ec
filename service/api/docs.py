"""The API docs pages: Swagger UI at /docs and ReDoc at /redoc, from the assets fastapi-offline ships.

FastAPI's default pages load their scripts and styles from a CDN: blank offline or behind a hospital
proxy. fastapi-offline mounts the same assets from the installed package at `ASSETS`; the pages are built
here with FastAPI's own page builders so that they carry a Content-Security-Policy keeping every request
on this origin. ReDoc's footer loads a logo from cdn.redoc.ly; the policy stops that request before it
leaves the browser (the logo hides itself when it cannot load), so viewing the docs tells no one outside.
'unsafe-inline' is for Swagger UI's inline start-up script and both pages' inline styles; the pages show
this service's own schema and nothing a user sent.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse

router = APIRouter(include_in_schema=False)

ASSETS = "/static-offline-docs"
"""Where fastapi-offline mounts its assets (its `static_url`)."""

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self' 'unsafe-inline'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "worker-src 'self' blob:",  # ReDoc's search index runs in a worker made from a blob
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ]
)


def _page(html: HTMLResponse) -> HTMLResponse:
    html.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    html.headers["X-Content-Type-Options"] = "nosniff"
    return html


@router.get("/docs")
async def swagger_ui(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return _page(
        get_swagger_ui_html(
            openapi_url=f"{root}{request.app.openapi_url}",
            title=f"{request.app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS}/favicon.png",
            # Swagger UI would otherwise send the schema's URL to validator.swagger.io for a badge.
            swagger_ui_parameters={"validatorUrl": None},
        )
    )


@router.get("/redoc")
async def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return _page(
        get_redoc_html(
            openapi_url=f"{root}{request.app.openapi_url}",
            title=f"{request.app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS}/favicon.png",
            with_google_fonts=False,
        )
    )
