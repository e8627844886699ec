"""POST /v1/classify: upload bytes -> decoded pixels -> tensors -> batcher -> labelled results.

Bodies are read with the byte limit enforced while reading (413 as soon as it is crossed, never an
unbounded buffer). Decoding and preprocessing run in the runtime's bounded pool, not on the event loop.
The whole request runs under the deadline (504); once the body is in, a client that disconnects gets its
queued images cancelled, so the batcher skips them.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncGenerator, Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import cv2
import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from service.auth import require_api_key
from service.batcher import BatchResult
from service.decode import DecodedImage, ImageFormat, decode
from service.errors import (
    CxrError,
    DeadlineExceeded,
    InvalidParameter,
    MalformedRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from service.model import ModelCard, OnnxModel
from service.preprocess import Geometry, register_cam
from service.repository import ServedModel
from service.runtime import Runtime
from service.schemas import Classification, ClassifyResponse, Heatmap, ImageInfo, ModelRef, Problem, Timing

logger = logging.getLogger(__name__)
router = APIRouter()
T = TypeVar("T")

RAW_TYPES: dict[str, ImageFormat | None] = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "application/dicom": "dicom",
    "application/octet-stream": None,  # identified from the file signature
}
_NAME = r"^[A-Za-z0-9._-]{1,100}$"


@dataclass(frozen=True)
class _Upload:
    data: bytes
    fmt: ImageFormat | None


@dataclass(frozen=True)
class _Prepared:
    tensor: np.ndarray
    geometry: Geometry
    decoded: DecodedImage


def runtime_of(request: Request) -> Runtime:
    return cast(Runtime, request.app.state.runtime)


async def _bounded(stream: AsyncGenerator[bytes, None], limit: int) -> AsyncGenerator[bytes, None]:
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"The request body is over the limit of {limit} bytes.")
        yield chunk


async def read_uploads(request: Request, limit: int, max_files: int) -> list[_Upload]:
    """The images in a raw-body or multipart request; 413 over `limit` bytes, 415 for other types."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body ({declared} bytes) is over the limit of {limit} bytes.")
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        parser = MultiPartParser(
            request.headers,
            _bounded(request.stream(), limit),
            max_files=max_files,
            max_fields=16,
            max_part_size=4096,
        )
        try:
            form = await parser.parse()
        except MultiPartException as error:
            raise MalformedRequest(f"The multipart body could not be parsed: {error.message}") from None
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        try:
            if not files:
                raise InvalidParameter("The multipart body has no file parts; send images as file fields.")
            uploads = []
            for file in files:
                part_type = (file.content_type or "").split(";")[0].strip().lower()
                uploads.append(_Upload(await file.read(), RAW_TYPES.get(part_type)))
            return uploads
        finally:
            await form.close()
    if media_type not in RAW_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type {media_type or '(none)'} is not accepted; send image/png, image/jpeg, "
            "application/dicom, application/octet-stream or multipart/form-data."
        )
    body = bytearray()
    async for chunk in _bounded(request.stream(), limit):
        body.extend(chunk)
    return [_Upload(bytes(body), RAW_TYPES[media_type])]


def _prepare(upload: _Upload, model: OnnxModel, max_pixels: int) -> _Prepared:
    decoded = decode(upload.data, max_pixels=max_pixels, fmt=upload.fmt)
    tensor, geometry = model.prepare(decoded.pixels)
    return _Prepared(tensor, geometry, decoded)


def _heatmap(cam: np.ndarray | None, geometry: Geometry) -> Heatmap:
    if cam is None:
        raise RuntimeError("heatmap requested from a model without a CAM output")
    full = register_cam(cam, geometry)
    peak = float(full.max())
    scaled = np.clip(full / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(full)
    ok, png = cv2.imencode(".png", np.rint(scaled * 255.0).astype(np.uint8))
    if not ok:
        raise RuntimeError("PNG encoding of the heatmap failed")
    return Heatmap(
        data=base64.b64encode(png.tobytes()).decode("ascii"),
        width=full.shape[1],
        height=full.shape[0],
        cam_max=peak,
    )


def label_for(probabilities: np.ndarray, card: ModelCard) -> str:
    """Binary: the positive label if its probability reaches the card's threshold; otherwise argmax."""
    if len(card.labels) == 2:
        positive = card.labels.index(card.positive_label)
        if float(probabilities[positive]) >= card.threshold:
            return card.positive_label
        return card.labels[1 - positive]
    return card.labels[int(np.argmax(probabilities))]


async def _disconnected(request: Request) -> None:
    # The body is fully read, so the next ASGI message is http.disconnect: it arrives when the client
    # goes away (or after our response, by which time this task is cancelled).
    while (await request.receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.05)


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Await `work`; if the client disconnects first, cancel it (dropping its queued images) -> None."""
    task = asyncio.ensure_future(work)
    task.add_done_callback(lambda done: done.cancelled() or done.exception())
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:
        task.cancel()
        watcher.cancel()
        raise
    watcher.cancel()
    if task in done:
        return task.result()
    task.cancel()
    return None


async def _prepare_all(runtime: Runtime, served: ServedModel, uploads: list[_Upload]) -> list[_Prepared]:
    loop = asyncio.get_running_loop()
    max_pixels = runtime.settings.max_pixels

    async def one(index: int, upload: _Upload) -> _Prepared:
        try:
            return await loop.run_in_executor(runtime.pool, _prepare, upload, served.model, max_pixels)
        except CxrError as error:
            if len(uploads) == 1:
                raise
            raise type(error)(
                f"Image {index + 1} of {len(uploads)}: {error.detail}", headers=error.headers
            ) from None

    with runtime.admit(len(uploads)):
        return await asyncio.gather(*(one(index, upload) for index, upload in enumerate(uploads)))


async def _infer(served: ServedModel, prepared: list[_Prepared], deadline: float) -> list[BatchResult]:
    tasks = [
        asyncio.ensure_future(served.batcher.submit(item.tensor, deadline=deadline)) for item in prepared
    ]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:  # one image refused or failed: the request fails, its other images are dropped
            task.cancel()
        raise


async def _classify(
    runtime: Runtime,
    served: ServedModel,
    uploads: list[_Upload],
    *,
    started: float,
    deadline: float,
    heatmap: bool,
) -> list[Classification]:
    prepared = await _prepare_all(runtime, served, uploads)
    results = await _infer(served, prepared, deadline)
    maps: list[Heatmap | None] = [None] * len(results)
    if heatmap:
        loop = asyncio.get_running_loop()
        maps = list(
            await asyncio.gather(
                *(
                    loop.run_in_executor(runtime.pool, _heatmap, r.cam, p.geometry)
                    for r, p in zip(results, prepared, strict=True)
                )
            )
        )
    total_ms = (time.monotonic() - started) * 1000.0
    card = served.model.card
    reference = ModelRef(name=served.model.name, version=served.model.version, sha256=served.model.sha256)
    classifications = []
    for index, (item, result, heat) in enumerate(zip(prepared, results, maps, strict=True)):
        label = label_for(result.probabilities, card)
        runtime.metrics.images.labels(model=served.key, label=label).inc()
        runtime.metrics.queue_seconds.labels(model=served.key).observe(result.queue_ms / 1000.0)
        classifications.append(
            Classification(
                index=index,
                label=label,
                probabilities={
                    name: float(p) for name, p in zip(card.labels, result.probabilities, strict=True)
                },
                threshold=card.threshold,
                model=reference,
                timing=Timing(queue_ms=result.queue_ms, inference_ms=result.inference_ms, total_ms=total_ms),
                batch_size=result.batch_size,
                image=ImageInfo(
                    format=item.decoded.format,
                    width=item.decoded.original_width,
                    height=item.decoded.original_height,
                    lung_crop=item.geometry.lung_crop,
                ),
                flags=item.decoded.flags,
                heatmap=heat,
            )
        )
    return classifications


_PROBLEMS: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "description": text, "content": {"application/problem+json": {}}}
    for status, text in {
        400: "Undecodable, empty or unsupported image, or malformed body",
        401: "Missing or wrong API key (when keys are configured)",
        404: "Unknown model or version",
        413: "Body over the byte limit, or image over the pixel limit (from its header)",
        415: "Unsupported Content-Type or file type",
        422: "Invalid parameters",
        429: "Queue full (when configured to answer 429)",
        503: "Queue full, warming up, or shutting down (Retry-After)",
        504: "Deadline exceeded",
    }.items()
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_REQUEST_BODY = {
    "required": True,
    "content": {
        "image/png": _BINARY,
        "image/jpeg": _BINARY,
        "application/dicom": _BINARY,
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
            }
        },
    },
}


@router.post(
    "/v1/classify",
    response_model=ClassifyResponse,
    response_model_exclude_none=True,
    dependencies=[Depends(require_api_key)],
    responses=_PROBLEMS,
    openapi_extra={"requestBody": _REQUEST_BODY},
    summary="Classify chest X-rays (research use only)",
)
async def classify(
    request: Request,
    model: str | None = Query(
        None, pattern=_NAME, description="model name (default: the repository default)"
    ),
    version: str | None = Query(None, pattern=_NAME, description="model version (default: the newest)"),
    heatmap: bool = Query(False, description="add the class activation map as a base64 PNG"),
) -> ClassifyResponse | Response:
    """One or more PNG, JPEG or DICOM images, as a raw body or as multipart file fields."""
    started = time.monotonic()
    runtime = runtime_of(request)
    settings = runtime.settings
    runtime.check_accepting()
    served = runtime.repository.get(model, version)
    if heatmap and "cam" not in served.model.output_names:
        raise InvalidParameter(f"Model {served.key} has no class activation map output; drop heatmap=true.")
    deadline = started + settings.request_timeout_s
    timeout = asyncio.timeout(settings.request_timeout_s)
    try:
        async with timeout:
            uploads = await read_uploads(
                request, settings.max_upload_bytes, max_files=settings.queue_capacity
            )
            work = _classify(runtime, served, uploads, started=started, deadline=deadline, heatmap=heatmap)
            results = await _unless_disconnected(request, work)
    except TimeoutError:
        if timeout.expired():
            raise DeadlineExceeded(
                f"The request took longer than its {settings.request_timeout_s:g} s deadline."
            ) from None
        raise
    request_id = str(request.state.request_id)
    if results is None:
        logger.info("request_id=%s client disconnected; its queued images were dropped", request_id)
        return Response(status_code=499)
    logger.info(
        "request_id=%s model=%s images=%d formats=%s bytes=%d sizes=%s batch=%s queue_ms=%s inference_ms=%s total_ms=%.1f",
        request_id,
        served.key,
        len(results),
        ",".join(r.image.format for r in results),
        sum(len(u.data) for u in uploads),
        ",".join(f"{r.image.width}x{r.image.height}" for r in results),
        ",".join(str(r.batch_size) for r in results),
        ",".join(f"{r.timing.queue_ms:.1f}" for r in results),
        ",".join(f"{r.timing.inference_ms:.1f}" for r in results),
        results[0].timing.total_ms,
    )
    return ClassifyResponse(request_id=request_id, results=results)
