"""Request body -> uploaded image bytes, with the byte limit enforced while reading.

A raw body (`image/png`, `image/jpeg`, `application/dicom`, or `application/octet-stream` to identify the
file by its signature) is one image; `multipart/form-data` carries one or more file fields. The limit is
checked against Content-Length first, then counted chunk by chunk as the body streams in, so no body over
the limit is ever held in memory (413), whether or not the client declared its length.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass

from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from service.errors import InvalidParameter, MalformedRequest, PayloadTooLarge, UnsupportedMediaType
from service.imaging.pixels import ImageFormat

RAW_TYPES: dict[str, ImageFormat | None] = {
    "image/png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "application/dicom": "dicom",
    "application/octet-stream": None,  # identified from the file signature
}


@dataclass(frozen=True)
class Upload:
    """One image's bytes and the format its Content-Type declares (None: identify by signature)."""

    data: bytes
    fmt: ImageFormat | None


async def _body(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    """The body's chunks straight from the ASGI messages (one generator layer, not Request.stream() plus
    a bounding one around it: a multi-megabyte film comes in some ten chunks); 413 once over `limit`."""
    total = 0
    more = True
    while more:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        more = bool(message.get("more_body", False))
        total += len(chunk)
        if total > limit:
            raise PayloadTooLarge(f"The request body is over the limit of {limit} bytes.")
        if chunk:
            yield chunk


def _check_declared(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge(f"The request body ({declared} bytes) is over the limit of {limit} bytes.")


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body as one bytes object (joined once); 413 over `limit` bytes, declared or counted."""
    _check_declared(request, limit)
    chunks = [chunk async for chunk in _body(request, limit)]
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def read_uploads(request: Request, limit: int, max_files: int) -> list[Upload]:
    """The images in a raw-body or multipart request; 413 over `limit` bytes, 415 for other types."""
    _check_declared(request, limit)
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media_type == "multipart/form-data":
        parser = MultiPartParser(
            request.headers,
            _body(request, limit),
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
                uploads.append(Upload(await file.read(), RAW_TYPES.get(part_type)))
            return uploads
        finally:
            await form.close()
    if media_type not in RAW_TYPES:
        raise UnsupportedMediaType(
            f"Content-Type {media_type or '(none)'} is not accepted; send image/png, image/jpeg, "
            "application/dicom, application/octet-stream or multipart/form-data."
        )
    # One copy of the body: the chunks are joined once at the end (a growing bytearray plus bytes() copied
    # a multi-megabyte film two to three times on the event loop thread; measured with py-spy).
    chunks = [chunk async for chunk in _body(request, limit)]
    return [Upload(chunks[0] if len(chunks) == 1 else b"".join(chunks), RAW_TYPES[media_type])]
