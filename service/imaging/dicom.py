"""DICOM bytes -> 8-bit grayscale pixels, the one DICOM decoder used by the service, `cxr predict`, `cxr pacs`.

Pixel order follows PS3.3 C.11 (and what broke in viewers that did otherwise): Modality LUT
(Rescale Slope/Intercept or Modality LUT Sequence, C.11.1) -> VOI LUT or window (C.11.2) -> MONOCHROME1
inversion (C.7.6.3.1.2). Every stage after the Modality LUT works on [0, 1], so the output range never
depends on the storage dtype:

- a window (Window Center/Width, VOI LUT Function LINEAR, LINEAR_EXACT or SIGMOID) maps straight to [0, 1]
  with the formulas of C.11.2.1.2 and C.11.2.1.3 (pydicom's `apply_windowing` instead returns values in
  the stored range moved by the rescale, which callers easily normalise with the wrong range);
- a VOI LUT Sequence is divided by its nominal output range, 2**(bits per entry) - 1 (C.11.2.1.1);
- without any VOI: data of at most 8 stored bits is already display-ready (secondary captures, JPEG
  exports) and keeps its grey levels, scaled by BitsStored; deeper data is raw detector output whose used
  range is unknown, so its own min/max (without Pixel Padding Value) is used, as viewers do and as the
  training set's 16-bit PNGs were made.

Codecs (pydicom pixel backends, chosen for their licences): JPEG 2000 with pylibjpeg-openjpeg (MIT),
RLE with pylibjpeg-rle (MIT) or pydicom, JPEG baseline/extended 8-bit with Pillow (HPND), JPEG-LS with
pyjpegls (MIT, CharLS BSD-3, installed with highdicom), JPEG lossless and 12-bit JPEG with python-gdcm
(GDCM is BSD). The GPL-licensed pylibjpeg-libjpeg is deliberately not used.
"""

from __future__ import annotations

import io
import logging
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.errors import InvalidImage, UnsupportedDicom
from service.imaging.pixels import DecodedImage, check_pixel_limit, to_training_scale

logger = logging.getLogger(__name__)

CHEST_BODY_PARTS = frozenset({"CHEST", "THORAX", "LUNG", "PORT CHEST", "TORAX", "THORAX_LUNG", "CHEST_LUNG"})
# ViewPosition defined terms (PS3.3 C.8.11.5.1.1). Decubitus films are frontal projections of a patient
# lying on one side: not lateral, but not the upright frontal views the model was trained on either.
LATERAL_VIEWS = frozenset({"LL", "RL", "LATERAL", "LAT"})
DECUBITUS_VIEWS = frozenset({"LLD", "RLD"})
_LATERAL_CODES = frozenset({"399067008", "R-10232"})  # SNOMED CT / SRT "lateral" (CID 4010 view codes)

# Preferred decoder per transfer syntax (pydicom would otherwise take any installed backend, in its order).
_PREFERRED_PLUGIN = {
    "1.2.840.10008.1.2.4.90": "pylibjpeg",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91": "pylibjpeg",  # JPEG 2000
    "1.2.840.10008.1.2.4.80": "pyjpegls",  # JPEG-LS lossless
    "1.2.840.10008.1.2.4.81": "pyjpegls",  # JPEG-LS near-lossless
    "1.2.840.10008.1.2.4.50": "pillow",  # JPEG baseline 8-bit
    "1.2.840.10008.1.2.4.57": "gdcm",  # JPEG lossless
    "1.2.840.10008.1.2.4.70": "gdcm",  # JPEG lossless, first-order prediction
}


@dataclass(frozen=True)
class DicomPolicy:
    """Which DICOM images the model may see. An absent or empty tag is accepted (it says nothing)."""

    modalities: frozenset[str] = frozenset({"CR", "DX", "DR"})
    """Accepted Modality values; empty accepts any."""
    check_body_part: bool = True
    """Refuse a BodyPartExamined that is present and not a chest."""
    chest_body_parts: frozenset[str] = field(default=CHEST_BODY_PARTS)


def _read_dataset(data: bytes) -> Any:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(io.BytesIO(data), force=True)
    except (InvalidDicomError, EOFError, ValueError, KeyError, OSError, struct.error, TypeError) as error:
        raise InvalidImage(f"Not a readable DICOM file ({type(error).__name__}).") from None


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value).strip().upper() if value is not None else ""


def _number(ds: Any, keyword: str, default: float) -> float:
    value = ds.get(keyword, None)
    if value is None or value == "":
        return default
    if isinstance(value, list | tuple) or getattr(value, "VM", 1) > 1:  # MultiValue: the first (C.11.2.1.2)
        value = value[0]
    return float(value)


def _view_flags(ds: Any) -> dict[str, str]:
    """`view` from ViewPosition; `lateral` when ViewPosition or View Code Sequence says lateral."""
    flags: dict[str, str] = {}
    view = _text(ds, "ViewPosition")
    if view:
        flags["view"] = view
    meanings: list[str] = []
    for item in ds.get("ViewCodeSequence", None) or []:
        meanings.append(str(item.get("CodeMeaning", "")).lower())
        if str(item.get("CodeValue", "")) in _LATERAL_CODES:
            meanings.append("lateral")
    lateral = view in LATERAL_VIEWS or any("lateral" in m and "decubitus" not in m for m in meanings)
    if lateral:
        flags["lateral"] = "true"
        flags["warning"] = "lateral view: the model was trained on frontal (PA/AP) radiographs only"
    elif view in DECUBITUS_VIEWS or any("decubitus" in m for m in meanings):
        flags["warning"] = "decubitus view: the model was trained on upright or supine frontal radiographs"
    return flags


def check_tags(ds: Any, policy: DicomPolicy) -> dict[str, str]:
    """Reject what the model must not see (PS3.3 C.7.6.3 Image Pixel module); return flags worth reporting."""
    if "PixelData" not in ds:
        kind = (
            "Float pixel data is"
            if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds
            else "PixelData is"
        )
        raise UnsupportedDicom(f"The DICOM file has no pixel data ({kind} absent); send an image object.")
    modality = _text(ds, "Modality")
    if modality and policy.modalities and modality not in policy.modalities:
        raise UnsupportedDicom(
            f"Modality {modality} is not a radiograph; accepted: {', '.join(sorted(policy.modalities))}."
        )
    body_part = _text(ds, "BodyPartExamined")
    if policy.check_body_part and body_part and body_part not in policy.chest_body_parts:
        raise UnsupportedDicom(f"BodyPartExamined is {body_part}, not a chest.")
    frames = int(_number(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise UnsupportedDicom(f"Multi-frame DICOM ({frames} frames) is not supported; send one frame.")
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = _text(ds, "PhotometricInterpretation") or "MONOCHROME2"
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedDicom(f"Colour DICOM ({photometric}, {samples} samples/pixel) is not supported.")
    allocated = int(ds.get("BitsAllocated", 0) or 0)
    stored = int(ds.get("BitsStored", allocated) or allocated)
    if allocated not in (8, 16, 32) or not 1 <= stored <= allocated:
        raise InvalidImage(f"Unsupported pixel layout: BitsAllocated {allocated}, BitsStored {stored}.")
    return _view_flags(ds)


def decode_dicom(data: bytes, *, max_pixels: int, policy: DicomPolicy | None = None) -> DecodedImage:
    """Decode one frame of a grayscale CR/DX radiograph to 8-bit display values at training scale.

    Raises UnsupportedDicom (no pixels, multi-frame, colour, refused modality or body part),
    InvalidImage (unreadable or undecodable) or PayloadTooLarge (Rows x Columns over `max_pixels`, checked
    before the pixels are decoded). `policy` defaults to DicomPolicy() (CR, DX, DR; chest body parts).
    """
    ds = _read_dataset(data)
    flags = check_tags(ds, policy or DicomPolicy())
    pixels = _display_frame(ds, max_pixels)
    rows, columns = pixels.shape
    return DecodedImage(to_training_scale(pixels), "dicom", rows, columns, flags)


def _display_frame(ds: Any, max_pixels: int) -> np.ndarray:
    """The one grayscale frame as 8-bit display values (Modality LUT, VOI, MONOCHROME1), after the pixel
    limit is checked from Rows x Columns."""
    rows, columns = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    check_pixel_limit(columns, rows, max_pixels)
    stored = _stored_pixels(ds)
    if stored.shape != (rows, columns):
        raise UnsupportedDicom(f"Expected one {rows}x{columns} grayscale frame, got shape {stored.shape}.")
    return np.rint(display_values(ds, stored) * 255.0).astype(np.uint8)


def display_pixels(data: bytes, *, max_side: int, max_pixels: int) -> np.ndarray:
    """One frame of a grayscale radiograph as 8-bit display values, the levels decode_dicom feeds the
    model, but at full field of view brought down (INTER_AREA, never enlarged) to a longer side of at
    most `max_side` px: the picture of a result (pacs.sc), not a model input. No policy check: the
    service has already accepted the image. Raises as decode_dicom."""
    import cv2

    if max_side < 1:
        raise ValueError("max_side must be at least 1")
    ds = _read_dataset(data)
    check_tags(ds, DicomPolicy(modalities=frozenset(), check_body_part=False))
    pixels = _display_frame(ds, max_pixels)
    rows, columns = pixels.shape
    scale = max_side / max(rows, columns)
    if scale >= 1.0:
        return pixels
    size = (max(1, round(columns * scale)), max(1, round(rows * scale)))
    return np.asarray(cv2.resize(pixels, size, interpolation=cv2.INTER_AREA))


def _stored_pixels(ds: Any) -> np.ndarray:
    from pydicom.pixels.utils import pixel_array

    if "TransferSyntaxUID" not in ds.file_meta:
        # ACR-NEMA files carry no File Meta; pydicom has guessed the encoding while reading.
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2" if ds.is_implicit_VR else "1.2.840.10008.1.2.1"
    syntax = str(ds.file_meta.TransferSyntaxUID)
    preferred = _PREFERRED_PLUGIN.get(syntax, "")
    try:
        try:
            return np.asarray(pixel_array(ds, decoding_plugin=preferred))
        except Exception:
            if not preferred:
                raise
            # The preferred backend may be absent or refuse this stream: let pydicom try the others.
            return np.asarray(pixel_array(ds))
    except Exception as error:  # pydicom raises many types for missing codecs and corrupt streams
        logger.info("DICOM pixel decode failed: %s (transfer syntax %s)", type(error).__name__, syntax)
        raise InvalidImage(f"DICOM pixel data could not be decoded (transfer syntax {syntax}).") from None


def display_values(ds: Any, stored: np.ndarray) -> np.ndarray:
    """Stored values -> display values in [0, 1] (0 black): Modality LUT -> VOI -> MONOCHROME1 inversion."""
    from pydicom.pixels.processing import apply_modality_lut

    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    scaled = _voi(ds, values)
    if scaled is None:
        low, high = _no_voi_range(ds, values)
        scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    scaled = np.clip(scaled, 0.0, 1.0)
    if _text(ds, "PhotometricInterpretation") == "MONOCHROME1":
        scaled = 1.0 - scaled  # after the VOI stage, never before (PS3.3 C.7.6.3.1.2)
    return scaled


def _voi(ds: Any, values: np.ndarray) -> np.ndarray | None:
    """The VOI stage mapped to [0, 1], or None when the dataset has no usable VOI (PS3.3 C.11.2)."""
    sequence = ds.get("VOILUTSequence", None)
    if sequence and "LUTDescriptor" in sequence[0] and "LUTData" in sequence[0]:
        from pydicom.pixels.processing import apply_voi

        bits = int(sequence[0].LUTDescriptor[2])
        try:
            lut = apply_voi(np.rint(values).astype(np.int64), ds, index=0)
        except (NotImplementedError, ValueError, AttributeError, struct.error) as error:
            logger.info("VOI LUT Sequence unusable (%s); falling back", type(error).__name__)
        else:
            return np.asarray(lut, dtype=np.float64) / float(2**bits - 1)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _number(ds, "WindowCenter", 0.0), _number(ds, "WindowWidth", 0.0)
        function = _text(ds, "VOILUTFunction") or "LINEAR"
        return window(values, center, width, function)
    return None


def window(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray | None:
    """PS3.3 C.11.2.1.2 (LINEAR), C.11.2.1.3.1 (SIGMOID), C.11.2.1.3.2 (LINEAR_EXACT), output in [0, 1].

    None for a window the standard forbids (width < 1 for LINEAR, <= 0 otherwise) or an unknown function:
    the caller then treats the image as having no VOI, as viewers do.
    """
    if function == "LINEAR":
        if width < 1:
            return None
        if width == 1:  # a threshold: (w - 1) is 0
            return (values > center - 0.5).astype(np.float64)
        return np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
    if width <= 0:
        return None
    if function == "LINEAR_EXACT":
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(np.clip(-4.0 * (values - center) / width, -700.0, 700.0)))
    logger.info("unknown VOI LUT Function %s; ignoring the window", function)
    return None


def _no_voi_range(ds: Any, values: np.ndarray) -> tuple[float, float]:
    """The value range mapped to black..white when no VOI applies (see the module docstring)."""
    bits = int(ds.get("BitsStored", 8) or 8)
    if bits <= 8 and "ModalityLUTSequence" not in ds:
        signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
        low, high = (-(2.0 ** (bits - 1)), 2.0 ** (bits - 1) - 1) if signed else (0.0, 2.0**bits - 1)
        slope, intercept = _number(ds, "RescaleSlope", 1.0), _number(ds, "RescaleIntercept", 0.0)
        low, high = sorted((low * slope + intercept, high * slope + intercept))
        return low, high
    padding = ds.get("PixelPaddingValue", None)
    if padding is not None and not isinstance(padding, bytes):
        from pydicom.pixels.processing import apply_modality_lut

        padded = float(np.asarray(apply_modality_lut(np.array([padding]), ds), dtype=np.float64)[0])
        kept = values[values != padded]
        if kept.size:
            return float(kept.min()), float(kept.max())
    return float(values.min()), float(values.max())
