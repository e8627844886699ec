"""POST /v1/classify: upload bytes -> decoded pixels -> tensors -> batcher -> labelled results.

Bodies come in through service.api.uploads (byte limit enforced while reading). Decoding and preprocessing
run in the runtime's bounded pool, not on the event loop.
The whole request runs under the deadline (504); once the body is in, a client that disconnects gets its
queued images cancelled, so the batcher skips them.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Annotated, TypeVar

import cv2
import numpy as np
from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from service.api.auth import require_api_key
from service.api.deps import runtime_of
from service.api.schemas import (
    CLASSIFY_REQUEST_BODY,
    PROBLEM_RESPONSES,
    Classification,
    ClassifyResponse,
    Domain,
    Heatmap,
    ImageInfo,
    ModelRef,
    Problem,
    Refused,
    Timing,
)
from service.api.uploads import Upload, read_uploads
from service.errors import CxrError, InvalidParameter, NotAChestRadiograph, request_deadline
from service.imaging.decode import decode
from service.imaging.domain_verdict import DomainVerdict
from service.imaging.pixels import DecodedImage
from service.imaging.preprocess import Geometry, cam_levels
from service.inference.batcher import BatchResult
from service.inference.decision import label_for
from service.inference.model import OnnxModel
from service.inference.repository import ServedModel
from service.settings import Settings
from service.state import Runtime

logger = logging.getLogger(__name__)
router = APIRouter()
T = TypeVar("T")

_NAME = r"^[A-Za-z0-9._-]{1,100}$"
PATH = "/v1/classify"


class ClassifyParams(BaseModel):
    """The query parameters of POST /v1/classify."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    model: str | None = Field(None, pattern=_NAME, description="model name (default: the repository default)")
    version: str | None = Field(None, pattern=_NAME, description="model version (default: the newest)")
    heatmap: bool = Field(False, description="add the class activation map as a base64 PNG")


@dataclass(frozen=True)
class _Prepared:
    tensor: np.ndarray
    geometry: Geometry
    domain: DomainVerdict
    decoded: DecodedImage

    def flags(self) -> dict[str, str]:
        """The decoder's flags, plus `domain` when the check corrected the film, warns about it, or found it
        out of domain."""
        flag = self.domain.flag
        return self.decoded.flags if flag is None else {**self.decoded.flags, "domain": flag}


def _prepare(upload: Upload, model: OnnxModel, settings: Settings) -> _Prepared:
    decoded = decode(
        upload.data, max_pixels=settings.max_pixels, fmt=upload.fmt, policy=settings.dicom_policy
    )
    tensor, geometry, verdict = model.prepare(decoded)  # runs the input-domain check
    return _Prepared(tensor, geometry, verdict, decoded)


def refusal(domain: DomainVerdict) -> NotAChestRadiograph:
    """The 422 for an image the input-domain check refused, with the verdict in the problem body."""
    return NotAChestRadiograph(
        f"The image does not look like a frontal chest radiograph, so it was not analysed: {domain.summary}.",
        extensions={"domain": domain.to_dict()},
    )


def _heatmap(cam: np.ndarray | None, geometry: Geometry) -> Heatmap:
    if cam is None:
        raise RuntimeError("heatmap requested from a model without a CAM output")
    levels, peak = cam_levels(cam, geometry)
    ok, png = cv2.imencode(".png", levels)
    if not ok:
        raise RuntimeError("PNG encoding of the heatmap failed")
    return Heatmap(
        data=base64.b64encode(png.tobytes()).decode("ascii"),
        width=levels.shape[1],
        height=levels.shape[0],
        cam_max=peak,
    )


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


async def _prepare_all(runtime: Runtime, served: ServedModel, uploads: list[Upload]) -> list[_Prepared]:
    loop = asyncio.get_running_loop()
    settings = runtime.settings

    async def one(index: int, upload: Upload) -> _Prepared:
        try:
            return await loop.run_in_executor(runtime.pool, _prepare, upload, served.model, settings)
        except CxrError as error:
            if len(uploads) == 1:
                raise
            raise type(error)(
                f"Image {index + 1} of {len(uploads)}: {error.detail}", headers=error.headers
            ) from None

    with runtime.admit(len(uploads)):
        if len(uploads) == 1:  # the common case, without gather's task per image
            return [await one(0, uploads[0])]
        return await asyncio.gather(*(one(index, upload) for index, upload in enumerate(uploads)))


async def _infer(served: ServedModel, prepared: list[_Prepared], deadline: float) -> list[BatchResult]:
    if len(prepared) == 1:  # cancelling this task cancels the image's future, so the batcher skips it
        return [await served.batcher.submit(prepared[0].tensor, deadline=deadline)]
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
    uploads: list[Upload],
    *,
    started: float,
    deadline: float,
    heatmap: bool,
) -> list[Classification | Refused]:
    prepared = await _prepare_all(runtime, served, uploads)
    refuse = runtime.settings.domain_policy == "refuse"
    refused = [refuse and item.domain.verdict == "out" for item in prepared]
    for item in prepared:
        runtime.metrics.domain.labels(model=served.key, verdict=item.domain.verdict).inc()
    if len(prepared) == 1 and refused[0]:
        raise refusal(prepared[0].domain)
    # Refused images of a multi-image request never reach the batcher; the others are classified.
    kept = [item for item, out in zip(prepared, refused, strict=True) if not out]
    results = iter(await _infer(served, kept, deadline) if kept else [])
    maps: dict[int, Heatmap] = {}
    finished = [(index, item, next(results)) for index, item in enumerate(prepared) if not refused[index]]
    if heatmap and finished:
        loop = asyncio.get_running_loop()
        drawn = await asyncio.gather(
            *(loop.run_in_executor(runtime.pool, _heatmap, r.cam, p.geometry) for _, p, r in finished)
        )
        maps = {index: heat for (index, _, _), heat in zip(finished, drawn, strict=True)}
    total_ms = (time.monotonic() - started) * 1000.0
    card = served.model.card
    reference = ModelRef(name=served.model.name, version=served.model.version, sha256=served.model.sha256)
    by_index = {index: result for index, _, result in finished}
    entries: list[Classification | Refused] = []
    for index, item in enumerate(prepared):
        image = ImageInfo(
            format=item.decoded.format,
            width=item.decoded.original_width,
            height=item.decoded.original_height,
            lung_crop=item.geometry.lung_crop,
        )
        domain = Domain(**item.domain.to_dict())
        if refused[index]:
            error = refusal(item.domain)
            problem = Problem(
                type=error.type_uri,
                title=error.title,
                status=error.status,
                detail=error.detail,
                instance=PATH,
            )
            entries.append(
                Refused(
                    index=index,
                    problem=problem,
                    model=reference,
                    image=image,
                    flags=item.flags(),
                    domain=domain,
                )
            )
            continue
        result = by_index[index]
        label = label_for(result.probabilities, card)
        runtime.metrics.images.labels(model=served.key, label=label).inc()
        runtime.metrics.queue_seconds.labels(model=served.key).observe(result.queue_ms / 1000.0)
        entries.append(
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
                image=image,
                flags=item.flags(),
                domain=domain,
                heatmap=maps.get(index),
            )
        )
    return entries


@router.post(
    PATH,
    response_model=ClassifyResponse,
    response_model_exclude_none=True,
    dependencies=[Depends(require_api_key)],
    responses=PROBLEM_RESPONSES,
    openapi_extra={"requestBody": CLASSIFY_REQUEST_BODY},
    summary="Classify chest X-rays (research use only)",
)
async def classify(request: Request, params: Annotated[ClassifyParams, Query()]) -> Response:
    """One or more PNG, JPEG or DICOM images, as a raw body or as multipart file fields."""
    started = time.monotonic()
    model, version, heatmap = params.model, params.version, params.heatmap
    runtime = runtime_of(request)
    settings = runtime.settings
    runtime.check_accepting()
    served = runtime.repository.get(model, version)
    if heatmap and "cam" not in served.model.output_names:
        raise InvalidParameter(f"Model {served.key} has no class activation map output; drop heatmap=true.")
    deadline = started + settings.request_timeout_s
    async with request_deadline(settings.request_timeout_s):
        uploads = await read_uploads(request, settings.max_upload_bytes, max_files=settings.queue_capacity)
        work = _classify(runtime, served, uploads, started=started, deadline=deadline, heatmap=heatmap)
        results = await _unless_disconnected(request, work)
    request_id = str(request.state.request_id)
    if results is None:
        logger.info("request_id=%s client disconnected; its queued images were dropped", request_id)
        return Response(status_code=499)
    # Details for the middleware's one access line per request (service.api.middleware): sizes and timings,
    # never names, identifiers or pixels.
    classified = [r for r in results if isinstance(r, Classification)]
    request.state.log_detail = (
        f"model={served.key} images={len(results)} formats={','.join(r.image.format for r in results)} "
        f"bytes={sum(len(u.data) for u in uploads)} "
        f"sizes={','.join(f'{r.image.width}x{r.image.height}' for r in results)} "
        f"domain={','.join(r.domain.verdict for r in results)} "
        f"batch={','.join(str(r.batch_size) for r in classified)} "
        f"queue_ms={','.join(f'{r.timing.queue_ms:.1f}' for r in classified)} "
        f"inference_ms={','.join(f'{r.timing.inference_ms:.1f}' for r in classified)} "
        + (f"total_ms={classified[0].timing.total_ms:.1f}" if classified else "")
    )
    # Serialized here, once, by pydantic-core: FastAPI would validate the finished model again field by
    # field before dumping it (response_model still documents the schema in OpenAPI).
    body = ClassifyResponse(request_id=request_id, results=results).model_dump_json(exclude_none=True)
    return Response(body, media_type="application/json")
