"""Bytes -> 8-bit grayscale pixels: the first arrow of the data flow, shared by service, CLI and training.

Every image leaves this module as a 2-D `uint8` array whose shorter side is at most `SHORT_SIDE` px,
produced the way the training PNGs in `shared/data/cxr` were made (shorter side 320 px, INTER_AREA,
never enlarged). Large JPEGs are decoded in the DCT domain at 1/2, 1/4 or 1/8 scale when that still
leaves at least `SHORT_SIDE` px, which is 2-3x faster than a full decode (see docs/benchmarks.md).

The pixel limit is checked from the file header before any decode, so a decompression bomb (a tiny PNG
declaring 50000x50000 pixels) is rejected without allocating its pixels.
"""

from __future__ import annotations

import io
import logging
import struct
import traceback
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import cv2
import numpy as np

from service.errors import CxrError, InvalidImage, PayloadTooLarge, UnsupportedMediaType
from service.imaging.pixels import SHORT_SIDE, DecodedImage, ImageFormat, check_pixel_limit, to_training_scale

if TYPE_CHECKING:  # pydicom is imported lazily: only DICOM users pay for it
    from service.imaging.dicom import DicomPolicy

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_MAX_PIXELS = 60_000_000

# libpng/libjpeg warnings about corrupt input go to stderr otherwise; a corrupt upload is answered with
# a clear error instead, and the log stays one line per request. OpenCV 4 (the PyTriton peer's numpy<2
# environment: OpenCV 5 needs numpy 2) has only the top-level function, with the same levels.
if hasattr(cv2.utils, "logging"):
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
else:
    cv2.setLogLevel(2)  # type: ignore[attr-defined]  # LOG_LEVEL_ERROR; OpenCV 5's stubs lack it

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_DEFLATED_DICOM = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian (PS3.5 A.5)
# Native (uncompressed) syntaxes: pydicom's own code reads them; no native codec is involved (PS3.5 A.1-A.5)
_NATIVE_DICOM = frozenset(
    {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", _DEFLATED_DICOM}
)
_DICOM_BYTES_PER_PIXEL = 4  # BitsAllocated is at most 32 for the images decode_dicom accepts
_DICOM_HEADER_ALLOWANCE = 16 * 1024 * 1024  # tags, overlays, icons and private data besides the pixels
_INFLATE_CHUNK = 1 << 20
# SOF markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but are not frames.
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def sniff_format(data: bytes) -> ImageFormat | None:
    """Identify PNG, JPEG or DICOM from magic bytes (DICOM: 'DICM' at offset 128, or a bare dataset)."""
    if data.startswith(_PNG_MAGIC):
        return "png"
    if data.startswith(_JPEG_MAGIC):
        return "jpeg"
    if len(data) >= 132 and data[128:132] == b"DICM":
        return "dicom"
    # ACR-NEMA style files without preamble start with a group 0x0008 (or 0x0002) little-endian tag,
    # followed by an explicit VR (two capitals) or an implicit 32-bit length that fits in the file.
    if len(data) >= 8 and data[1] == 0x00 and data[0] in (0x02, 0x08):
        explicit_vr = data[4:6].isalpha() and data[4:6].isupper()
        implicit_length = struct.unpack("<I", data[4:8])[0]
        if explicit_vr or implicit_length < len(data):
            return "dicom"
    return None


def header_size(data: bytes, fmt: ImageFormat) -> tuple[int, int]:
    """(width, height) declared by a PNG or JPEG header, read without decoding pixels."""
    if fmt == "png":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise InvalidImage("PNG file has no IHDR header (truncated or corrupt).")
        _check_png_chunks(data)
        width, height = struct.unpack(">II", data[16:24])
        return int(width), int(height)
    if fmt == "jpeg":
        return _jpeg_size(data)
    raise ValueError(f"header_size does not handle {fmt}")


def _check_png_chunks(data: bytes) -> None:
    """Every chunk must fit in the file (PNG spec 5.3). OpenCV allocates a buffer of each chunk's declared
    length before reading it: a 1.5 kB file declaring a 2 GB chunk allocated 2 GB (found by fuzzing)."""
    position = 8
    while position + 8 <= len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        if position + 12 + length > len(data):
            raise InvalidImage(
                f"PNG chunk at byte {position} declares {length} bytes, past the end of the file "
                "(truncated or corrupt)."
            )
        if data[position + 4 : position + 8] == b"IEND":
            return
        position += 12 + length


def _jpeg_size(data: bytes) -> tuple[int, int]:
    pos = 2
    end = len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            raise InvalidImage("JPEG marker stream is corrupt.")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _JPEG_SOF:
            if pos + 9 > end:
                break
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return int(width), int(height)
        if marker == 0xDA:  # start of scan before any frame header
            break
        pos += 2 + length
    raise InvalidImage("JPEG file has no frame header (truncated or corrupt).")


def _jpeg_components(data: bytes) -> int:
    """Number of colour components in the JPEG frame header (1 gray, 3 YCbCr/RGB, 4 CMYK); 0 if unread."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return 0
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _JPEG_SOF:
            return data[pos + 9] if pos + 9 < len(data) else 0
        if marker == 0xDA:
            return 0
        pos += 2 + length
    return 0


def _file_meta(data: bytes) -> tuple[str | None, int]:
    """(Transfer Syntax UID, offset of the dataset) as pydicom's reader will see them, without reading the
    dataset; (None, 0) when there is no readable File Meta group (pydicom then assumes a native syntax).

    The steps pydicom.dcmread takes before the dataset, through its public reader: the preamble, the File
    Meta group (0002; Explicit VR Little Endian per PS3.10 7.1, read as implicit VR when that fails, as
    dcmread does) and any Command Set group (0000; Implicit VR Little Endian per PS3.7 6.3)."""
    from pydicom.filereader import read_dataset, read_preamble

    stream = io.BytesIO(data)
    try:  # values convert lazily: reading one inside the guard
        read_preamble(stream, True)
        start = stream.tell()
        meta = read_dataset(stream, is_implicit_VR=False, is_little_endian=True, stop_when=_not_group(2))
        try:
            syntax = meta.get("TransferSyntaxUID", None)
            for element in meta:  # a wrongly encoded group fails here, as in dcmread
                _ = element.value
        except NotImplementedError:
            stream.seek(start)
            meta = read_dataset(stream, is_implicit_VR=True, is_little_endian=True, stop_when=_not_group(2))
            syntax = meta.get("TransferSyntaxUID", None)
        read_dataset(stream, is_implicit_VR=True, is_little_endian=True, stop_when=_not_group(0))
    except Exception:  # dcmread raises the same on these bytes, and that path is guarded
        return None, 0
    return (str(syntax) if syntax else None), stream.tell()


def _not_group(group: int) -> Callable[[int, str | None, int], bool]:
    """A read_dataset `stop_when`: stop before the first element outside `group`."""
    return lambda tag, vr, length: tag >> 16 != group


def check_deflated_dicom(data: bytes, offset: int, max_pixels: int) -> None:
    """Refuse a deflated dataset (starting at `offset`) that inflates beyond what `max_pixels` can need,
    before pydicom inflates it: pydicom inflates the whole dataset in one call, so a 1 MB upload of deflated
    zeros would otherwise allocate about 1 GB before Rows x Columns could be checked."""
    limit = max_pixels * _DICOM_BYTES_PER_PIXEL + _DICOM_HEADER_ALLOWANCE
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    pending, inflated = data[offset:], 0
    try:
        while pending and not inflater.eof:  # at most one chunk of output held at a time
            inflated += len(inflater.decompress(pending, _INFLATE_CHUNK))
            pending = inflater.unconsumed_tail
            if inflated > limit:
                raise PayloadTooLarge(
                    f"The deflated DICOM dataset inflates to over {limit} bytes; the pixel limit of "
                    f"{max_pixels} pixels needs at most that."
                )
    except zlib.error:
        raise InvalidImage("The deflated DICOM dataset is corrupt (zlib stream error).") from None


def _guarded(read: Callable[[], T]) -> T:
    """`read()` (a service.imaging.dicom reader), with every parser failure answered as InvalidImage."""
    try:
        return read()
    except CxrError:
        raise
    except BaseException as error:
        if not _is_parser_failure(error):
            raise
        # pydicom converts tag values lazily, so reading any tag of a hostile file can raise whatever a
        # value converter raises (NotImplementedError for an unknown VR, ValueError, ...), and the Rust
        # codecs raise pyo3's PanicException. Bad bytes are the client's error (400), not a 500.
        # Logged by type and place only: exception messages can quote tag values (patient data).
        frame = traceback.extract_tb(error.__traceback__)[-1]
        logger.warning(
            "DICOM decode failed: %s at %s:%s; answered 400",
            type(error).__name__,
            Path(frame.filename).name,
            frame.lineno,
        )
        raise InvalidImage(f"The DICOM file could not be read ({type(error).__name__}).") from None


def _decode_dicom(data: bytes, max_pixels: int, policy: DicomPolicy | None) -> DecodedImage:
    """service.imaging.dicom.decode_dicom, with every parser failure answered as InvalidImage."""
    from service.imaging.dicom import decode_dicom

    return _guarded(lambda: decode_dicom(data, max_pixels=max_pixels, policy=policy))


def _display_dicom(data: bytes, max_pixels: int, max_side: int) -> np.ndarray:
    from service.imaging.dicom import display_pixels

    return _guarded(lambda: display_pixels(data, max_side=max_side, max_pixels=max_pixels))


def _isolated_if_compressed(data: bytes, max_pixels: int, function: Callable[..., T], *args: object) -> T:
    syntax, offset = _file_meta(data)
    if syntax == _DEFLATED_DICOM:
        check_deflated_dicom(data, offset, max_pixels)
    if syntax is None or syntax in _NATIVE_DICOM:
        return function(data, max_pixels, *args)
    # Compressed pixel data goes through native codecs, GDCM among them, which can abort the process on
    # hostile input (service.imaging.sandbox): decoded in a child process.
    from service.imaging.sandbox import run_isolated

    return run_isolated(function, data, max_pixels, *args)


def _decode_dicom_file(data: bytes, max_pixels: int, policy: DicomPolicy | None) -> DecodedImage:
    return _isolated_if_compressed(data, max_pixels, _decode_dicom, policy)


def display_dicom(data: bytes, *, max_side: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A DICOM radiograph for a picture of the result (the PACS Secondary Capture): the grey levels
    `decode` gives the model (same Modality LUT -> VOI -> MONOCHROME1 path), full field of view, but
    brought to a longer side of at most `max_side` px instead of the training scale. Raises as `decode`."""
    if sniff_format(data) != "dicom":
        raise UnsupportedMediaType("Not a DICOM file.")
    return _isolated_if_compressed(data, max_pixels, _display_dicom, max_side)


_JPEG_COLOUR = {
    cv2.IMREAD_REDUCED_GRAYSCALE_8: cv2.IMREAD_REDUCED_COLOR_8,
    cv2.IMREAD_REDUCED_GRAYSCALE_4: cv2.IMREAD_REDUCED_COLOR_4,
    cv2.IMREAD_REDUCED_GRAYSCALE_2: cv2.IMREAD_REDUCED_COLOR_2,
    cv2.IMREAD_GRAYSCALE: cv2.IMREAD_COLOR,
}


def _jpeg_reduced_flag(width: int, height: int) -> int:
    short = min(width, height)
    for factor, flag in (
        (8, cv2.IMREAD_REDUCED_GRAYSCALE_8),
        (4, cv2.IMREAD_REDUCED_GRAYSCALE_4),
        (2, cv2.IMREAD_REDUCED_GRAYSCALE_2),
    ):
        if short // factor >= SHORT_SIDE:
            return flag
    return cv2.IMREAD_GRAYSCALE


COLOUR_LEVELS = 24
"""A pixel counts as coloured when its channels differ by this many 8-bit levels (JPEG chroma noise on a
gray image stays well below it)."""


def colour_fraction(pixels: np.ndarray) -> float:
    """Share of coloured pixels in a decoded BGR(A) image, on a grid of at most ~16k pixels (OpenCV
    operations: a numpy version cost 4-9 ms on a decoded film, as much as the colour decode itself)."""
    if pixels.ndim != 3 or pixels.shape[2] < 3:
        return 0.0
    step = max(1, int(np.sqrt(pixels.shape[0] * pixels.shape[1] / 16384)))
    sample = np.ascontiguousarray(pixels[::step, ::step, :3])
    if sample.dtype != np.uint8:  # 16-bit PNG: compare the high bytes
        sample = (sample >> 8).astype(np.uint8) if sample.dtype == np.uint16 else sample.astype(np.uint8)
    blue, green, red = cv2.split(sample)
    spread = cv2.max(cv2.max(cv2.absdiff(blue, green), cv2.absdiff(green, red)), cv2.absdiff(blue, red))
    coloured = cv2.compare(spread, np.full_like(spread, COLOUR_LEVELS), cv2.CMP_GE)
    return cv2.countNonZero(coloured) / float(spread.size)


def _to_gray8(pixels: np.ndarray) -> np.ndarray:
    """Any decoded PNG (8/16-bit, gray/RGB/RGBA/gray+alpha) -> 8-bit gray, as the dataset README describes."""
    if pixels.dtype != np.uint8:
        # 16-bit: scale linearly from the image's own min/max (dataset README, "How the PNGs were made").
        pixels = pixels.astype(np.float32)
        low, high = float(pixels.min()), float(pixels.max())
        pixels = (pixels - low) * (255.0 / (high - low)) if high > low else np.zeros_like(pixels)
        pixels = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
    if pixels.ndim == 2:
        return pixels
    channels = pixels.shape[2]
    if channels == 4:  # BGRA: composite onto black, then luma
        alpha = pixels[:, :, 3:4].astype(np.float32) / 255.0
        pixels = np.rint(pixels[:, :, :3].astype(np.float32) * alpha).astype(np.uint8)
        return cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)
    if channels == 3:
        return cv2.cvtColor(pixels, cv2.COLOR_BGR2GRAY)
    if channels == 2:  # gray + alpha
        alpha = pixels[:, :, 1].astype(np.float32) / 255.0
        return np.rint(pixels[:, :, 0].astype(np.float32) * alpha).astype(np.uint8)
    return np.ascontiguousarray(pixels[:, :, 0])


def decode(
    data: bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    fmt: ImageFormat | None = None,
    policy: DicomPolicy | None = None,
    colour: bool = True,
) -> DecodedImage:
    """Decode PNG, JPEG or DICOM bytes to 8-bit grayscale at training scale, measuring the share of coloured
    pixels (`colour_fraction`, for the input-domain check) unless `colour` is False. `policy` says which
    DICOM images are accepted (default: service.imaging.dicom.DicomPolicy's defaults; the service passes its
    settings').

    Raises InvalidImage (corrupt or empty), PayloadTooLarge (over `max_pixels`, from the header) or
    UnsupportedMediaType (not PNG, JPEG or DICOM).
    """
    if not data:
        raise InvalidImage("The image is empty (0 bytes).")
    sniffed = sniff_format(data)
    if sniffed is None:
        raise UnsupportedMediaType("Not a PNG, JPEG or DICOM file (unrecognised file signature).")
    if fmt is not None and fmt != sniffed:
        raise InvalidImage(f"Content-Type says {fmt} but the bytes are {sniffed}.")
    if sniffed == "dicom":
        return _decode_dicom_file(data, max_pixels, policy)
    width, height = header_size(data, sniffed)
    check_pixel_limit(width, height, max_pixels)
    buffer = np.frombuffer(data, dtype=np.uint8)
    if sniffed == "jpeg":
        flag = _jpeg_reduced_flag(width, height)
        if colour and _jpeg_components(data) >= 3:
            # The grayscale decode drops chroma, and a second, colour decode would cost as much again
            # (entropy decoding dominates): one colour decode at the same scale, then luma (~25 % more
            # than the grayscale decode on 2,500 px films; pixels identical within 1 level).
            flag = _JPEG_COLOUR[flag]
        pixels = cv2.imdecode(buffer, flag)
    else:
        pixels = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if pixels is None or pixels.size == 0:
        raise InvalidImage(f"The {sniffed.upper()} data could not be decoded (truncated or corrupt).")
    coloured = colour_fraction(pixels) if colour else 0.0
    pixels = _to_gray8(pixels)
    return DecodedImage(to_training_scale(pixels), sniffed, height, width, colour_fraction=coloured)


def _is_parser_failure(error: BaseException) -> bool:
    """Any ordinary exception, or a panic in a Rust extension (a BaseException); never an interrupt,
    an exit or a cancellation."""
    return isinstance(error, Exception) or type(error).__name__ == "PanicException"


def decode_file(
    path: str, *, max_pixels: int = DEFAULT_MAX_PIXELS, policy: DicomPolicy | None = None
) -> DecodedImage:
    """Read and decode a file; the same path as the service takes for uploaded bytes."""
    with open(path, "rb") as handle:
        return decode(handle.read(), max_pixels=max_pixels, policy=policy)
