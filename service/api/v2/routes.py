"""Open Inference Protocol v2 (KServe / Triton REST) over the same models and batchers as /v1.

Clients such as `cxr pacs` or tritonclient can target this service, Triton or KServe interchangeably:
v2 `infer` takes the *preprocessed* tensor (`image`, FP32, (N, S, S, 1) in [0, 1], the model card's
preprocessing contract) as JSON or with the binary tensor data extension (service.api.v2.wire), and returns the
graph's outputs (`probabilities`, and `cam` where the model has one). Requests go through the same dynamic
batcher, queue bound and deadline as /v1/classify. Errors are the protocol's `{"error": "..."}`
(service.api.problems). With API keys configured, every model endpoint needs one; the server's health,
readiness and metadata do not. Research use only.
"""

from __future__ import annotations

import asyncio
import functools
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request, Response

from service.api.auth import require_api_key
from service.api.deps import runtime_of
from service.api.schemas import V2_INFER_REQUEST_BODY, V2_INFER_RESPONSES, v2_error_responses
from service.api.uploads import read_body
from service.api.v2 import wire as tensors
from service.api.v2.config import model_config
from service.api.v2.wire import DATATYPE, InputSpec
from service.errors import MalformedRequest, UnsupportedMediaType, request_deadline
from service.inference.batcher import BatchResult
from service.inference.repository import ServedModel
from service.settings import Settings

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])

HEADER_LENGTH = "Inference-Header-Content-Length"
EXTENSIONS = ["binary_tensor_data", "model_configuration"]
"""Triton's names for the protocol extensions served here (its server metadata lists them the same way)."""
_MODEL = [Depends(require_api_key)]
_MODEL_ERRORS = v2_error_responses(401, 404)


def _io_metadata(served: ServedModel) -> dict[str, Any]:
    model = served.model
    size = model.input_size
    outputs = [{"name": "probabilities", "datatype": DATATYPE, "shape": [-1, len(model.card.labels)]}]
    for output in model.session.get_outputs():
        if output.name == "cam":
            outputs.append({"name": "cam", "datatype": DATATYPE, "shape": [-1, *list(output.shape[1:])]})
    return {
        "name": model.name,
        "versions": [model.version],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": model.input_name, "datatype": DATATYPE, "shape": [-1, size, size, 1]}],
        "outputs": outputs,
        "parameters": {
            "labels": model.card.labels,
            "positive_label": model.card.positive_label,
            "threshold": model.card.threshold,
            "sha256": model.sha256,
            "preprocessing": model.spec.to_dict(),
        },
    }


@router.get("/health/live", summary="v2 liveness")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get(
    "/health/ready", summary="v2 readiness (503 until every model is warm)", responses=v2_error_responses(503)
)
async def ready(request: Request) -> dict[str, bool]:
    runtime_of(request).check_accepting()
    return {"ready": True}


@router.get("", summary="v2 server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": "cxr-covid", "version": "0.1.0", "extensions": EXTENSIONS}


@router.get("/models/{name}", dependencies=_MODEL, summary="v2 model metadata", responses=_MODEL_ERRORS)
async def model_metadata(request: Request, name: str) -> dict[str, Any]:
    return _io_metadata(runtime_of(request).repository.get(name))


@router.get(
    "/models/{name}/versions/{version}",
    dependencies=_MODEL,
    summary="v2 model version metadata",
    responses=_MODEL_ERRORS,
)
async def model_version_metadata(request: Request, name: str, version: str) -> dict[str, Any]:
    return _io_metadata(runtime_of(request).repository.get(name, version))


def _ready(request: Request, served: ServedModel) -> dict[str, Any]:
    runtime_of(request).check_accepting()
    return {"name": served.model.name, "ready": True}


# Behind the key like the metadata: otherwise 200 against 404 would tell anyone which model names exist.
@router.get(
    "/models/{name}/ready",
    dependencies=_MODEL,
    summary="v2 model readiness",
    responses=v2_error_responses(401, 404, 503),
)
async def model_ready(request: Request, name: str) -> dict[str, Any]:
    return _ready(request, runtime_of(request).repository.get(name))


@router.get(
    "/models/{name}/versions/{version}/ready",
    dependencies=_MODEL,
    summary="v2 model version readiness",
    responses=v2_error_responses(401, 404, 503),
)
async def model_version_ready(request: Request, name: str, version: str) -> dict[str, Any]:
    return _ready(request, runtime_of(request).repository.get(name, version))


def _config(request: Request, served: ServedModel) -> dict[str, Any]:
    settings = runtime_of(request).settings
    model = served.model
    return model_config(
        model.directory.parent,
        name=model.name,
        input_names=[model.input_name],
        output_names=model.output_names,
        max_batch_size=settings.max_batch_size,
        preferred_batch_sizes=[size for size in served.batcher.sizes if size > 1],
        max_queue_delay_ms=settings.max_queue_delay_ms,
    )


@router.get(
    "/models/{name}/config",
    dependencies=_MODEL,
    summary="v2 model configuration (Triton's, from the repository's config.pbtxt)",
    responses=_MODEL_ERRORS,
)
async def config(request: Request, name: str) -> dict[str, Any]:
    return _config(request, runtime_of(request).repository.get(name))


@router.get(
    "/models/{name}/versions/{version}/config",
    dependencies=_MODEL,
    summary="v2 model version configuration",
    responses=_MODEL_ERRORS,
)
async def version_config(request: Request, name: str, version: str) -> dict[str, Any]:
    return _config(request, runtime_of(request).repository.get(name, version))


def _spec(served: ServedModel, settings: Settings) -> InputSpec:
    model = served.model
    outputs = ("probabilities", *(("cam",) if model.has_cam else ()))
    return InputSpec(model.input_name, model.input_size, outputs, settings.queue_capacity)


def _header_length(request: Request) -> int | None:
    value = request.headers.get(HEADER_LENGTH)
    if value is None:
        return None
    if not value.strip().isdigit():
        raise MalformedRequest(f"{HEADER_LENGTH} must be a byte count.")
    return int(value)


def _check_encoding(request: Request) -> None:
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise UnsupportedMediaType(
            f"Content-Encoding {encoding[:40]!r} is not supported on /v2; send the body uncompressed."
        )


async def _infer(request: Request, served: ServedModel) -> Response:
    runtime = runtime_of(request)
    settings = runtime.settings
    runtime.check_accepting()
    _check_encoding(request)
    header_length = _header_length(request)
    spec = _spec(served, settings)
    deadline = time.monotonic() + settings.request_timeout_s
    loop = asyncio.get_running_loop()
    async with request_deadline(settings.request_timeout_s):
        body = await read_body(request, settings.max_v2_body_bytes)
        # Parsing and conversion run on the runtime's parser thread, admitted like an image being
        # decoded, so a flood of bodies cannot queue there without bound (service.api.v2.wire: why that
        # thread does not stall the event loop).
        with runtime.admit(1):
            parsed = await loop.run_in_executor(runtime.parser, tensors.parse, body, header_length, spec)
        del body  # the JSON text is no longer needed; binary tensors are views that keep it alive
        results = await _queue(served, parsed.tensor, deadline)
        outputs = [(name, _stack(results, name), binary) for name, binary in parsed.outputs]
        content, json_length = await loop.run_in_executor(
            runtime.parser,
            functools.partial(
                tensors.render,
                model_name=served.model.name,
                model_version=served.model.version,
                request_id=parsed.id,
                outputs=outputs,
                parameters={"notice": "Research use only. Not for diagnosis."},
            ),
        )
    request.state.log_detail = (
        f"model={served.key} images={len(parsed.tensor)} binary_in={header_length is not None} "
        f"bytes_out={len(content)}"
    )
    if json_length is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type="application/octet-stream", headers={HEADER_LENGTH: str(json_length)})


async def _queue(served: ServedModel, tensor: np.ndarray, deadline: float) -> list[BatchResult]:
    """Every image through the model's batcher; one refused or failed image fails the request, and its
    other images are dropped from the queue."""
    tasks = [asyncio.ensure_future(served.batcher.submit(image, deadline=deadline)) for image in tensor]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


def _stack(results: list[BatchResult], name: str) -> np.ndarray:
    if name == "probabilities":
        return np.stack([result.probabilities for result in results])
    cams = [result.cam for result in results]
    return np.stack([cam for cam in cams if cam is not None])


@router.post(
    "/models/{name}/infer",
    dependencies=_MODEL,
    summary="v2 inference",
    responses=V2_INFER_RESPONSES,
    response_class=Response,
    openapi_extra=V2_INFER_REQUEST_BODY,
)
async def infer(request: Request, name: str) -> Response:
    return await _infer(request, runtime_of(request).repository.get(name))


@router.post(
    "/models/{name}/versions/{version}/infer",
    dependencies=_MODEL,
    summary="v2 inference on a model version",
    responses=V2_INFER_RESPONSES,
    response_class=Response,
    openapi_extra=V2_INFER_REQUEST_BODY,
)
async def infer_version(request: Request, name: str, version: str) -> Response:
    return await _infer(request, runtime_of(request).repository.get(name, version))
