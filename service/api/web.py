"""The web page: GET / (upload X-rays, see label, probability against threshold and the CAM overlay),
its assets under /static/, and POST /v1/decoded, the image the model saw, for files a browser cannot show.

The page is three hand-written files in service/api/static/ (no build step, no CDN: it works offline) and
talks to the same /v1/classify API as any client. Assets are an allowlist, not a directory mount, so no
request path ever reaches the file system. Every page response carries a Content-Security-Policy that
allows only this origin (plus data:/blob: images, for the heatmap PNG and local previews): the page shows
server answers and user files, and nothing else may run or load.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from importlib import resources

import cv2
from fastapi import APIRouter, Depends, Request, Response

from service.api.auth import require_api_key
from service.api.deps import runtime_of
from service.api.schemas import PROBLEM_RESPONSES
from service.api.uploads import Upload, read_uploads
from service.errors import InvalidParameter, NotFound, request_deadline
from service.imaging.decode import decode
from service.settings import Settings

router = APIRouter()

_MEDIA_TYPES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "img-src 'self' data: blob:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate CSP 2
}


@functools.cache
def _asset(name: str) -> tuple[bytes, str]:
    """Bytes and ETag of a packaged asset; read once, as they only change with the installed package."""
    body = resources.files("service.api").joinpath("static", name).read_bytes()
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _serve(request: Request, name: str) -> Response:
    body, etag = _asset(name)
    # no-cache + ETag: the browser revalidates (a 304 costs nothing), so an upgraded service never runs
    # a stale app.js against a changed API.
    headers = {**SECURITY_HEADERS, "ETag": etag, "Cache-Control": "no-cache"}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=_MEDIA_TYPES[name], headers=headers)


@router.get("/", include_in_schema=False)
async def page(request: Request) -> Response:
    return _serve(request, "index.html")


@router.get("/static/{name}", include_in_schema=False)
async def static(request: Request, name: str) -> Response:
    if name not in _MEDIA_TYPES or name == "index.html":
        raise NotFound(f"No asset named {name!r}.")
    return _serve(request, name)


def _decoded_png(upload: Upload, settings: Settings) -> bytes:
    pixels = decode(
        upload.data, max_pixels=settings.max_pixels, fmt=upload.fmt, policy=settings.dicom_policy
    ).pixels
    # Compression level 1: the page waits on this, and a 320-px grey image is small either way.
    ok, png = cv2.imencode(".png", pixels, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise RuntimeError("PNG encoding of the decoded image failed")
    return png.tobytes()


@router.post(
    "/v1/decoded",
    dependencies=[Depends(require_api_key)],
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "8-bit grayscale PNG"},
        **PROBLEM_RESPONSES,
    },
    summary="The decoded image the model sees (the heatmap's pixel grid)",
    tags=["web"],
)
async def decoded(request: Request) -> Response:
    """One PNG, JPEG or DICOM image (raw body or one multipart file) -> the 8-bit grayscale PNG that
    /v1/classify decodes it to: DICOM after its Modality LUT, VOI and MONOCHROME1 handling, shorter side
    at most 320 px. A heatmap from /v1/classify has exactly this width and height, so it overlays
    pixel for pixel. The web page uses it to show DICOM files, which browsers cannot display."""
    runtime = runtime_of(request)
    settings = runtime.settings
    runtime.check_accepting()
    async with request_deadline(settings.request_timeout_s):
        uploads = await read_uploads(request, settings.max_upload_bytes, max_files=1)
        if len(uploads) != 1:
            raise InvalidParameter("Send exactly one image.")
        # Same bounded pool and admission as classification: a flood of previews cannot starve it.
        with runtime.admit(1):
            loop = asyncio.get_running_loop()
            png = await loop.run_in_executor(runtime.pool, _decoded_png, uploads[0], settings)
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-store"})
