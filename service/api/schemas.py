"""Response shapes of the HTTP API (they are also the OpenAPI schema at /docs)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from service.inference.decision import NOTICE


class ModelRef(BaseModel):
    name: str
    version: str
    sha256: str = Field(description="sha256 of the model.onnx that produced the result")


class Timing(BaseModel):
    queue_ms: float = Field(description="time the image waited for its batch")
    inference_ms: float = Field(description="ONNX Runtime time of the batch it ran in")
    total_ms: float = Field(description="from the start of the request to the result")


class ImageInfo(BaseModel):
    format: str = Field(description="png, jpeg or dicom, from the file signature")
    width: int = Field(description="width of the uploaded image in pixels")
    height: int = Field(description="height of the uploaded image in pixels")
    lung_crop: str = Field(description="mask, fallback (implausible lung mask: whole image used) or off")


class Heatmap(BaseModel):
    media_type: str = "image/png"
    data: str = Field(description="base64 8-bit grayscale PNG: 255 * clip(cam / cam_max, 0, 1)")
    width: int = Field(description="PNG width: the decoded image's (shorter side at most 320 px)")
    height: int
    cam_max: float = Field(description="largest CAM value (positive-class logit units) in the map")


class FailedCheck(BaseModel):
    """One input-domain check that refused the image (service.imaging.domain_verdict.FailedCheck)."""

    check: str = Field(
        description="what was measured: shorter_side, colour_fraction, not_radiograph, distance, "
        "orientation_confidence, upright_after_correction, lung_largest_area, lung_centre_dx or lung_centre_dy"
    )
    score: float = Field(description="the image's score on that check")
    threshold: float = Field(description="the model card's threshold it missed")
    threshold_name: str = Field(description="the threshold's key under the card's `domain.thresholds`")
    rule: str = Field(description='"score > threshold refuses" or "score < threshold refuses"')


class Domain(BaseModel):
    """The input-domain check's verdict (service.imaging.input_check)."""

    verdict: Literal["in", "out", "corrected"] = Field(
        description="in: a frontal chest radiograph; corrected: a turned or inverted film, corrected before "
        "classifying; out: not a frontal chest radiograph (refused, or classified with a flag under "
        "domain_policy=flag)"
    )
    reasons: list[str] = Field(description="why, in words; empty for in")
    scores: dict[str, float] = Field(description="the measurements the verdict rests on")
    failed: list[FailedCheck] = Field(
        default_factory=list, description="each check that refused the image, with its score and threshold"
    )


class Problem(BaseModel):
    """RFC 9457 problem details (media type application/problem+json)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    request_id: str | None = None
    domain: Annotated[
        Domain | None,
        Field(
            description="extension member of a `.../not-a-chest-radiograph` problem: the input-domain "
            "verdict, whose `failed` names each check that refused the image with its score and the card's "
            "threshold"
        ),
    ] = None


class Classification(BaseModel):
    index: int = Field(description="position of the image in the request (multipart order)")
    label: str = Field(description="positive label if p(positive) >= threshold, else the other (binary)")
    probabilities: dict[str, float]
    threshold: float
    model: ModelRef
    timing: Timing
    batch_size: int = Field(description="images in the batch this one ran in (before padding)")
    image: ImageInfo
    flags: dict[str, str] = Field(
        description="warnings about the input, e.g. a lateral DICOM view, or `domain` for a corrected film or "
        "(under domain_policy=flag) an image that is not a frontal chest radiograph"
    )
    domain: Domain
    heatmap: Heatmap | None = Field(None, description="class activation map, with ?heatmap=true")


class Refused(BaseModel):
    """A multi-image request's entry for an image the input-domain check refused: no label, no score."""

    index: int = Field(description="position of the image in the request (multipart order)")
    problem: Problem = Field(description="what a single-image request would have got (422)")
    model: ModelRef
    image: ImageInfo
    flags: dict[str, str]
    domain: Domain


class ClassifyResponse(BaseModel):
    request_id: str
    notice: str = NOTICE
    results: list[Classification | Refused]


PROBLEM_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem, "description": text, "content": {"application/problem+json": {}}}
    for status, text in {
        400: "Undecodable, empty or unsupported image, or malformed body",
        401: "Missing or wrong API key (when keys are configured)",
        404: "Unknown model or version",
        413: "Body over the byte limit, or image over the pixel limit (from its header)",
        415: "Unsupported Content-Type or file type",
        422: "Invalid parameters, or (type ending /not-a-chest-radiograph) an image the input-domain check refused",
        429: "Queue full (when configured to answer 429)",
        503: "Queue full, warming up, or shutting down (Retry-After)",
        504: "Deadline exceeded",
    }.items()
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
CLASSIFY_REQUEST_BODY = {
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


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The problem+json answers a route can give, for its OpenAPI entry (a subset of PROBLEM_RESPONSES)."""
    return {status: PROBLEM_RESPONSES[status] for status in statuses}


class V2Error(BaseModel):
    """The Open Inference Protocol's error body (every error under /v2)."""

    error: str


_V2_ERRORS: dict[int, str] = {
    400: "Malformed body or invalid tensor (shape, datatype, values), in JSON or binary form",
    401: "Missing or wrong API key (when keys are configured)",
    404: "Unknown model or version, or no model configuration to report",
    413: "Body over --max-v2-body-bytes, or a batch over the per-request image limit (queue capacity)",
    415: "Compressed body (Content-Encoding)",
    429: "Queue full (when configured to answer 429)",
    503: "Queue full, warming up, or shutting down (Retry-After)",
    504: "Deadline exceeded",
}


def v2_error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The `{"error": ...}` answers a /v2 route can give, for its OpenAPI entry."""
    return {
        status: {"model": V2Error, "description": _V2_ERRORS[status], "content": {"application/json": {}}}
        for status in statuses
    }


_V2_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer"}},
        "datatype": {"type": "string"},
        "data": {"type": "array", "items": {"type": "number"}},
        "parameters": {
            "type": "object",
            "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
        },
    },
}
_V2_OUTPUTS = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["name"],
        "properties": {
            "name": {"type": "string"},
            "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}},
        },
    },
}
V2_INFER_REQUEST_BODY: dict[str, Any] = {
    "parameters": [
        {
            "name": "Inference-Header-Content-Length",
            "in": "header",
            "required": False,
            "description": "binary tensor data extension: length of the JSON header that starts the body; "
            "the raw little-endian tensor bytes follow it",
            "schema": {"type": "integer", "minimum": 0},
        }
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["inputs"],
                    "properties": {
                        "id": {"type": "string"},
                        "parameters": {
                            "type": "object",
                            "properties": {"binary_data_output": {"type": "boolean"}},
                        },
                        "inputs": {"type": "array", "items": _V2_TENSOR},
                        "outputs": _V2_OUTPUTS,
                    },
                }
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}
"""Open Inference Protocol v2 infer request (KServe / Triton REST, with the binary tensor data extension),
for the OpenAPI schema."""
V2_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Outputs as JSON, or a JSON header (length in Inference-Header-Content-Length) followed "
        "by the binary outputs",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    },
    **v2_error_responses(400, 401, 404, 413, 415, 429, 503, 504),
}
