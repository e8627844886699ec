"""Open Inference Protocol v2 (KServe / Triton REST) over the same models and batchers as /v1.

Clients such as `cxr pacs` can target this service, Triton or KServe interchangeably: v2 `infer` takes
the *preprocessed* tensor (`image`, FP32, (N, S, S, 1) in [0, 1], the model card's preprocessing contract)
and returns the graph's outputs (`probabilities`, and `cam` where the model has one). Requests go through
the same dynamic batcher, queue bound and deadline as /v1/classify. Research use only.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request

from service.auth import require_api_key
from service.batcher import BatchResult
from service.classify import runtime_of
from service.errors import DeadlineExceeded, InvalidParameter, MalformedRequest, PayloadTooLarge
from service.repository import ServedModel
from service.schemas import V2_INFER_REQUEST_BODY, problem_responses

router = APIRouter(prefix="/v2", tags=["open inference protocol v2"])

_DATATYPE = "FP32"
# Documented in the OpenAPI schema so that clients (and the schema fuzzing in tests/reliability) know them.
_METADATA_PROBLEMS = problem_responses(401, 404)
_INFER_PROBLEMS = problem_responses(400, 401, 404, 413, 422, 429, 503, 504)


def _io_metadata(served: ServedModel) -> dict[str, Any]:
    model = served.model
    size = model.input_size
    outputs = [{"name": "probabilities", "datatype": _DATATYPE, "shape": [-1, len(model.card.labels)]}]
    for output in model.session.get_outputs():
        if output.name == "cam":
            outputs.append({"name": "cam", "datatype": _DATATYPE, "shape": [-1, *list(output.shape[1:])]})
    return {
        "name": model.name,
        "versions": [model.version],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": model.input_name, "datatype": _DATATYPE, "shape": [-1, size, size, 1]}],
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
    "/health/ready", summary="v2 readiness (503 until every model is warm)", responses=problem_responses(503)
)
async def ready(request: Request) -> dict[str, bool]:
    runtime_of(request).check_accepting()
    return {"ready": True}


@router.get("", summary="v2 server metadata")
async def server_metadata() -> dict[str, Any]:
    return {"name": "cxr-covid", "version": "0.1.0", "extensions": []}


@router.get(
    "/models/{name}",
    dependencies=[Depends(require_api_key)],
    summary="v2 model metadata",
    responses=_METADATA_PROBLEMS,
)
async def model_metadata(request: Request, name: str) -> dict[str, Any]:
    return _io_metadata(runtime_of(request).repository.get(name))


@router.get(
    "/models/{name}/versions/{version}",
    dependencies=[Depends(require_api_key)],
    summary="v2 model version metadata",
    responses=_METADATA_PROBLEMS,
)
async def model_version_metadata(request: Request, name: str, version: str) -> dict[str, Any]:
    return _io_metadata(runtime_of(request).repository.get(name, version))


@router.get("/models/{name}/ready", summary="v2 model readiness", responses=problem_responses(404, 503))
async def model_ready(request: Request, name: str) -> dict[str, Any]:
    runtime = runtime_of(request)
    runtime.repository.get(name)
    runtime.check_accepting()
    return {"name": name, "ready": True}


async def _read_json(request: Request, limit: int) -> dict[str, Any]:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body ({declared} bytes) is over the limit of {limit} bytes.")
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise PayloadTooLarge(f"The request body is over the limit of {limit} bytes.")
    try:
        document = json.loads(body)
    except ValueError:
        raise MalformedRequest("The v2 infer body is not valid JSON.") from None
    if not isinstance(document, dict):
        raise MalformedRequest("The v2 infer body must be a JSON object.")
    return document


def _input_tensor(document: dict[str, Any], served: ServedModel) -> np.ndarray:
    """Validate the one `image` input against the model's input spec and return it as (N, S, S, 1)."""
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidParameter("Expected exactly one input tensor in `inputs`.")
    spec = inputs[0]
    size = served.model.input_size
    if spec.get("name") != served.model.input_name:
        raise InvalidParameter(
            f"Unknown input {spec.get('name')!r}; this model's input is {served.model.input_name!r}."
        )
    if spec.get("datatype") != _DATATYPE:
        raise InvalidParameter(f"Input datatype must be {_DATATYPE}.")
    shape = spec.get("shape")
    if not (isinstance(shape, list) and len(shape) == 4 and shape[1:] == [size, size, 1]):
        raise InvalidParameter(f"Input shape must be [N, {size}, {size}, 1]; got {shape!r}.")
    count = shape[0]
    if not isinstance(count, int) or count < 1:
        raise InvalidParameter("The batch dimension must be a positive integer.")
    try:
        tensor = np.asarray(spec.get("data"), dtype=np.float32).reshape(count, size, size, 1)
    except (TypeError, ValueError):
        raise InvalidParameter(f"Input data does not hold {count}x{size}x{size}x1 numbers.") from None
    if not np.isfinite(tensor).all():
        raise InvalidParameter("Input data holds NaN or infinite values.")
    return tensor


def _requested_outputs(document: dict[str, Any], available: list[str]) -> list[str]:
    requested = document.get("outputs")
    if requested is None:
        return available
    if not isinstance(requested, list):
        raise InvalidParameter("`outputs` must be a list of {name} objects.")
    names = [item.get("name") if isinstance(item, dict) else None for item in requested]
    unknown = [name for name in names if name not in available]
    if unknown:
        raise InvalidParameter(f"Unknown output(s) {unknown}; available: {available}.")
    return [str(name) for name in names]


async def _infer(request: Request, served: ServedModel) -> dict[str, Any]:
    runtime = runtime_of(request)
    settings = runtime.settings
    runtime.check_accepting()
    started = time.monotonic()
    deadline = started + settings.request_timeout_s
    document = await _read_json(request, settings.max_upload_bytes)
    tensor = _input_tensor(document, served)
    available = ["probabilities", *(["cam"] if served.model.has_cam else [])]
    wanted = _requested_outputs(document, available)
    tasks = [asyncio.ensure_future(served.batcher.submit(image, deadline=deadline)) for image in tensor]
    try:
        async with asyncio.timeout(settings.request_timeout_s):
            results: list[BatchResult] = await asyncio.gather(*tasks)
    except TimeoutError:
        raise DeadlineExceeded(
            f"The request took longer than its {settings.request_timeout_s:g} s deadline."
        ) from None
    finally:
        for task in tasks:
            task.cancel()
    outputs = []
    for name in wanted:
        stacked = np.stack([r.probabilities if name == "probabilities" else r.cam for r in results])  # type: ignore[misc]
        outputs.append(
            {
                "name": name,
                "datatype": _DATATYPE,
                "shape": list(stacked.shape),
                "data": stacked.astype(np.float32).ravel().tolist(),
            }
        )
    response: dict[str, Any] = {
        "model_name": served.model.name,
        "model_version": served.model.version,
        "outputs": outputs,
        "parameters": {"notice": "Research use only. Not for diagnosis."},
    }
    if "id" in document:
        response["id"] = str(document["id"])
    return response


@router.post(
    "/models/{name}/infer",
    dependencies=[Depends(require_api_key)],
    summary="v2 inference",
    responses=_INFER_PROBLEMS,
    openapi_extra={"requestBody": V2_INFER_REQUEST_BODY},
)
async def infer(request: Request, name: str) -> dict[str, Any]:
    return await _infer(request, runtime_of(request).repository.get(name))


@router.post(
    "/models/{name}/versions/{version}/infer",
    dependencies=[Depends(require_api_key)],
    summary="v2 inference on a model version",
    responses=_INFER_PROBLEMS,
    openapi_extra={"requestBody": V2_INFER_REQUEST_BODY},
)
async def infer_version(request: Request, name: str, version: str) -> dict[str, Any]:
    return await _infer(request, runtime_of(request).repository.get(name, version))
