"""DICOM bytes -> 8-bit grayscale pixels, the one DICOM decoder used by the service, `cxr predict` and training.

Pixel order follows PS3.3 C.11 (and what broke in viewers that did otherwise): Modality LUT
(Rescale Slope/Intercept, C.11.1) -> VOI LUT or window (C.11.2, C.11.8) -> MONOCHROME1 inversion
(C.7.6.3.1.2), with the output range taken from BitsStored, never from the storage dtype.

Compressed transfer syntaxes decode through pydicom's pixel backends: pylibjpeg + pylibjpeg-openjpeg (MIT)
for JPEG 2000 and pylibjpeg-rle for RLE; JPEG baseline/extended through Pillow or pylibjpeg; JPEG-LS and
JPEG lossless need `python-gdcm` (BSD), which is an optional extra (`pip install cxr-covid[dicom-gdcm]`).
The GPL-licensed pylibjpeg-libjpeg is deliberately not a dependency.
"""

from __future__ import annotations

import io
import logging
import os
import struct
from typing import Any

import numpy as np

from service.decode import DecodedImage, check_pixel_limit, to_training_scale
from service.errors import InvalidImage, UnsupportedDicom

logger = logging.getLogger(__name__)

ALLOWED_MODALITIES = frozenset(
    m.strip().upper() for m in os.environ.get("CXR_DICOM_MODALITIES", "CR,DX,DR").split(",") if m.strip()
)
"""Modalities accepted (configurable with CXR_DICOM_MODALITIES); an empty tag is accepted."""

CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "PORT CHEST", "TORAX", "THORAX_LUNG"})
CHECK_BODY_PART = os.environ.get("CXR_DICOM_CHECK_BODY_PART", "true").lower() not in ("0", "false", "no")
LATERAL_VIEWS = frozenset({"LL", "RL", "LATERAL", "LAT", "LLD", "RLD"})


def _read_dataset(data: bytes) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, EOFError, ValueError, KeyError, OSError, struct.error) as error:
        raise InvalidImage(f"Not a readable DICOM file ({type(error).__name__}).") from None


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value).strip().upper() if value is not None else ""


def _check_tags(ds: Any) -> dict[str, str]:
    """Reject what the model must not see; return flags worth reporting (e.g. a lateral view)."""
    if "PixelData" not in ds:
        raise UnsupportedDicom("The DICOM file has no pixel data (PixelData is absent).")
    modality = _text(ds, "Modality")
    if modality and ALLOWED_MODALITIES and modality not in ALLOWED_MODALITIES:
        raise UnsupportedDicom(
            f"Modality {modality} is not a radiograph; accepted: {', '.join(sorted(ALLOWED_MODALITIES))}."
        )
    body_part = _text(ds, "BodyPartExamined")
    if CHECK_BODY_PART and body_part and body_part not in CHEST_BODY_PARTS:
        raise UnsupportedDicom(f"BodyPartExamined is {body_part}, not a chest.")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise UnsupportedDicom(f"Multi-frame DICOM ({frames} frames) is not supported; send one frame.")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = _text(ds, "PhotometricInterpretation") or "MONOCHROME2"
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedDicom(f"Colour DICOM ({photometric}, {samples} samples/pixel) is not supported.")
    flags: dict[str, str] = {}
    view = _text(ds, "ViewPosition")
    if view:
        flags["view"] = view
    if view in LATERAL_VIEWS:
        flags["warning"] = "lateral view: the model was trained on frontal (PA/AP) radiographs only"
    return flags


def decode_dicom(data: bytes, *, max_pixels: int) -> DecodedImage:
    """Decode one frame of a grayscale CR/DX radiograph to 8-bit display values at training scale."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = _read_dataset(data)
    flags = _check_tags(ds)
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    check_pixel_limit(columns, rows, max_pixels)
    if "TransferSyntaxUID" not in ds.file_meta:
        # ACR-NEMA files carry no File Meta; pydicom has guessed the encoding while reading.
        ds.file_meta.TransferSyntaxUID = (
            "1.2.840.10008.1.2" if ds.is_implicit_VR else "1.2.840.10008.1.2.1"
        )
    try:
        stored = ds.pixel_array
    except Exception as error:  # pydicom raises many types for missing codecs and corrupt streams
        logger.info("DICOM pixel decode failed: %s", type(error).__name__)
        raise InvalidImage(
            f"DICOM pixel data could not be decoded (transfer syntax {ds.file_meta.TransferSyntaxUID})."
        ) from None
    if stored.ndim != 2:
        raise UnsupportedDicom(f"Expected one grayscale frame, got pixel array of shape {stored.shape}.")
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    has_voi = "VOILUTSequence" in ds or ("WindowCenter" in ds and "WindowWidth" in ds)
    if has_voi:
        values = np.asarray(apply_voi_lut(values, ds, index=0), dtype=np.float64)
    low, high = _output_range(ds, values, has_voi)
    scaled = np.clip((values - low) / max(high - low, 1e-9), 0.0, 1.0)
    if _text(ds, "PhotometricInterpretation") == "MONOCHROME1":
        scaled = 1.0 - scaled  # after the VOI stage, never before (PS3.3 C.7.6.3.1.2)
    pixels = np.rint(scaled * 255.0).astype(np.uint8)
    return DecodedImage(to_training_scale(pixels), "dicom", rows, columns, flags)


def _output_range(ds: Any, values: np.ndarray, has_voi: bool) -> tuple[float, float]:
    """The value range that maps to black..white.

    With a window, PS3.3 C.11.2.1.2 maps to the output range of the VOI stage; pydicom returns values in
    the stored range then, so the range comes from BitsStored. Without any VOI, the image's own min/max is
    used (what viewers do for a missing window), not the dtype's range.
    """
    if has_voi and "WindowWidth" in ds and "VOILUTSequence" not in ds:
        bits = int(ds.get("BitsStored", 16) or 16)
        if int(ds.get("PixelRepresentation", 0) or 0) == 1:
            return -(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1
        return 0.0, 2.0**bits - 1
    return float(values.min()), float(values.max())
