"""The exception family every layer raises; one handler turns it into RFC 9457 problem+json.

`detail` stays a plain string so clients written against FastAPI's default `{"detail": ...}` keep working.
Messages never carry pixel data or patient identifiers: they describe sizes, types and limits only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any


class CxrError(Exception):
    """Base class: an error with an HTTP status, a short title and a human-readable detail."""

    status: int = 500
    title: str = "Internal error"
    slug: str = "internal-error"

    def __init__(
        self, detail: str, *, headers: dict[str, str] | None = None, extensions: dict[str, Any] | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extensions = extensions or {}  # extra members of the problem body (RFC 9457 section 3.2)

    @property
    def type_uri(self) -> str:
        return f"https://github.com/cxr-covid/cxr-covid/blob/main/docs/errors.md#{self.slug}"


class InvalidImage(CxrError):
    """The bytes are empty, truncated, or not a decodable image of a supported kind."""

    status = 400
    title = "Invalid image"
    slug = "invalid-image"


class MalformedRequest(CxrError):
    """The request body is not well-formed (e.g. a multipart body that does not parse)."""

    status = 400
    title = "Malformed request"
    slug = "malformed-request"


class UnsupportedDicom(InvalidImage):
    """A DICOM file that decodes but that the model must not see (no pixels, colour, wrong modality, ...)."""

    title = "Unsupported DICOM"
    slug = "unsupported-dicom"


class Unauthorized(CxrError):
    status = 401
    title = "Unauthorized"
    slug = "unauthorized"


class NotFound(CxrError):
    status = 404
    title = "Not found"
    slug = "not-found"


class PayloadTooLarge(CxrError):
    """The body is over the byte limit, or the image header declares more pixels than allowed."""

    status = 413
    title = "Payload too large"
    slug = "payload-too-large"


class UnsupportedMediaType(CxrError):
    status = 415
    title = "Unsupported media type"
    slug = "unsupported-media-type"


class InvalidParameter(CxrError):
    status = 422
    title = "Invalid parameter"
    slug = "invalid-parameter"


class NotAChestRadiograph(CxrError):
    """The input-domain check (service.imaging.input_check) found the image is not a frontal chest radiograph the model
    was made for. The problem body carries the verdict as `domain`; `detail` says why."""

    status = 422
    title = "Not a chest radiograph"
    slug = "not-a-chest-radiograph"

    @property
    def type_uri(self) -> str:
        # A path ending in the slug (clients match the suffix `/not-a-chest-radiograph`); the folder's
        # README says what the problem means.
        return f"https://github.com/cxr-covid/cxr-covid/tree/main/docs/problems/{self.slug}"


class Overloaded(CxrError):
    """The batch queue is full: the client should retry later (Retry-After is set)."""

    status = 503
    title = "Service overloaded"
    slug = "overloaded"


class TooManyRequests(Overloaded):
    status = 429
    title = "Too many requests"
    slug = "too-many-requests"


class ModelNotReady(CxrError):
    status = 503
    title = "Model not ready"
    slug = "model-not-ready"


class DeadlineExceeded(CxrError):
    status = 504
    title = "Deadline exceeded"
    slug = "deadline-exceeded"


@contextlib.asynccontextmanager
async def request_deadline(seconds: float) -> AsyncIterator[None]:
    """Run the block under the request's deadline: when `seconds` pass, the block is cancelled (queued
    images are dropped with it) and DeadlineExceeded (504) is raised. A TimeoutError from inside the block
    that is not this deadline's passes through unchanged."""
    timeout = asyncio.timeout(seconds)
    try:
        async with timeout:
            yield
    except TimeoutError:
        if timeout.expired():
            raise DeadlineExceeded(f"The request took longer than its {seconds:g} s deadline.") from None
        raise
