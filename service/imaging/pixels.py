"""The decoded image: what every decoder (service.imaging.decode, service.imaging.dicom) returns, and the two
rules they share (the pixel limit, checked from the header before any decode; the training scale).

A module of its own so that the DICOM decoder and the generic one both depend on it rather than on each
other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import cv2
import numpy as np

from service.errors import InvalidImage, PayloadTooLarge

SHORT_SIDE = 320
"""Shorter side of the training images; every decoded image is brought to this scale (never enlarged)."""

ImageFormat = Literal["png", "jpeg", "dicom"]


@dataclass(frozen=True)
class DecodedImage:
    """Grayscale pixels at training scale, plus what the response may say about the source image."""

    pixels: np.ndarray  # uint8, 2-D, shorter side <= SHORT_SIDE
    format: ImageFormat
    original_height: int
    original_width: int
    flags: dict[str, str] = field(default_factory=dict)  # e.g. {"view": "LATERAL"} from DICOM tags
    colour_fraction: float = 0.0  # share of pixels whose channels differ by >= COLOUR_LEVELS (0 for gray)


def check_pixel_limit(width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise InvalidImage(f"Image declares an empty size ({width}x{height}).")
    if width * height > max_pixels:
        raise PayloadTooLarge(
            f"Image declares {width}x{height} = {width * height} pixels; the limit is {max_pixels}."
        )


def to_training_scale(pixels: np.ndarray) -> np.ndarray:
    """Bring the shorter side to SHORT_SIDE with INTER_AREA, as the training PNGs were made; never enlarge."""
    height, width = pixels.shape[:2]
    short = min(height, width)
    if short <= SHORT_SIDE:
        return pixels
    scale = SHORT_SIDE / short
    size = (round(width * scale), SHORT_SIDE) if height <= width else (SHORT_SIDE, round(height * scale))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
