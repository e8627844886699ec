"""Pillow's full decode to 8-bit grayscale at the training scale: the "natural" decoder of the naive baseline
and of the peers' `-pillow` targets, so the bench can tell the serving design's gain from the decoder's.

A first app converts to grayscale and keeps no colour measure, so the input check's colour step sees 0.
An unreadable body is the service's own InvalidImage (400), which every target answers with its status.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from service.errors import InvalidImage
from service.imaging.pixels import DecodedImage, ImageFormat, to_training_scale


def decode_pillow(body: bytes) -> DecodedImage:
    """The whole image decoded by Pillow, converted to grayscale, brought to the training scale."""
    try:
        with Image.open(io.BytesIO(body)) as image:
            fmt: ImageFormat = "png" if image.format == "PNG" else "jpeg"
            gray = np.asarray(image.convert("L"))
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise InvalidImage(f"not a readable image: {type(error).__name__}") from None
    return DecodedImage(to_training_scale(gray), fmt, gray.shape[0], gray.shape[1], colour_fraction=0.0)
