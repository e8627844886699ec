"""The picture inside the result Secondary Capture: the radiograph, the heatmap over it, and the text.

Layout, top to bottom, all burned into the pixels (a viewer cannot hide them, PS3.3 C.7.6.1.1.3
Burned In Annotation YES):

    header  RESEARCH USE ONLY - NOT FOR DIAGNOSIS (white on red), then the result lines
    image   the radiograph at full field of view with the class activation map blended over it
            (service.imaging.overlay.blend: the same overlay `cxr predict --heatmap` draws)
    footer  the colour legend, the model lines, and the caution again

The caution is at both ends, so no crop that keeps any of the radiograph removes it from both. Narrow
images are centred on a canvas at least `MIN_WIDTH` wide so the text stays legible; the radiograph's own
pixels are never enlarged. Text is Pillow's built-in scalable font, so every machine draws the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from service.imaging.overlay import blend, colorize

CAUTION = "RESEARCH USE ONLY - NOT FOR DIAGNOSIS"
MIN_WIDTH = 512
_BLACK = (0, 0, 0)
_WHITE = (255, 255, 255)
_RED = (170, 0, 0)
_GREY = (200, 200, 200)


@dataclass(frozen=True)
class Layout:
    """Where things are on the canvas (pixels): its size and the radiograph's box (x0, y0, x1, y1)."""

    width: int
    height: int
    image_box: tuple[int, int, int, int]


@dataclass(frozen=True)
class Heat:
    """A heatmap to draw: levels on any grid of the radiograph's aspect ratio, and how to colour them."""

    levels: np.ndarray
    colormap: str
    opacity: float


@cache
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _wrap(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: float) -> list[str]:
    """Lines of `text` no wider than `width`: split at spaces, and inside words too long for a line
    (a sha256)."""
    lines: list[str] = []
    current = ""
    for word in text.split(" "):
        candidate = f"{current} {word}" if current else word
        if font.getlength(candidate) <= width:
            current = candidate
            continue
        if current:
            lines.append(current)
        current = ""
        while font.getlength(word) > width and len(word) > 1:
            cut = len(word) - 1
            while cut > 1 and font.getlength(word[:cut]) > width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        lines.append(current)
    return lines


def _band(
    width: int, lines: list[tuple[str, tuple[int, int, int], tuple[int, int, int]]], size: int
) -> np.ndarray:
    """A full-width strip of text lines, each (text, colour, background), wrapped to fit."""
    font = _font(size)
    margin = max(4, size // 2)
    wrapped = [
        (part, colour, fill) for text, colour, fill in lines for part in _wrap(text, font, width - 2 * margin)
    ]
    line_height = round(size * 1.35)
    strip = Image.new("RGB", (width, line_height * len(wrapped) + margin), _BLACK)
    draw = ImageDraw.Draw(strip)
    for index, (text, colour, fill) in enumerate(wrapped):
        top = margin // 2 + index * line_height
        if fill != _BLACK:
            draw.rectangle((0, top, width, top + line_height - 1), fill=fill)
        draw.text((margin, top + (line_height - size) // 2), text, font=font, fill=colour)
    return np.asarray(strip)


def _legend(width: int, size: int, colormap: str) -> np.ndarray:
    """The colour bar, labelled low .. high (the map is scaled to its own maximum, so no units)."""
    font = _font(size)
    margin = max(4, size // 2)
    low, high = "low", "high"
    title = "class activation map (where the model looked), relative to its maximum:"
    title_lines = _wrap(title, font, width - 2 * margin)
    line_height = round(size * 1.35)
    bar_left = margin + round(font.getlength(low)) + margin
    bar_right = width - margin - round(font.getlength(high)) - margin
    bar_top = line_height * len(title_lines) + margin // 2
    strip = Image.new("RGB", (width, bar_top + line_height + margin), _BLACK)
    draw = ImageDraw.Draw(strip)
    for index, line in enumerate(title_lines):
        draw.text((margin, margin // 2 + index * line_height), line, font=font, fill=_GREY)
    ramp = np.linspace(0, 255, max(1, bar_right - bar_left)).round().astype(np.uint8)[None, :]
    bar = cv2.cvtColor(colorize(ramp, colormap), cv2.COLOR_BGR2RGB)
    bar = np.repeat(bar, line_height - 4, axis=0)
    strip.paste(Image.fromarray(np.ascontiguousarray(bar)), (bar_left, bar_top + 2))
    text_top = bar_top + (line_height - size) // 2
    draw.text((margin, text_top), low, font=font, fill=_WHITE)
    draw.text((bar_right + margin, text_top), high, font=font, fill=_WHITE)
    return np.asarray(strip)


def compose(
    gray: np.ndarray, heat: Heat | None, *, result_lines: list[str], model_lines: list[str]
) -> tuple[np.ndarray, Layout]:
    """RGB uint8 picture (and its layout) of the radiograph `gray` (2-D uint8, already at the SC's
    size), with `heat` blended over it when given and the legend below it, and the lines as text."""
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError("gray must be a 2-D uint8 image")
    height, width = gray.shape
    if heat is not None:
        # The heatmap covers the same field of view on a coarser grid: stretched over the radiograph
        # (bilinear, as the web page's canvas does), both span the same physical extent.
        levels = cv2.resize(heat.levels, (width, height), interpolation=cv2.INTER_LINEAR)
        image = cv2.cvtColor(
            blend(gray, levels, colormap=heat.colormap, opacity=heat.opacity), cv2.COLOR_BGR2RGB
        )
    else:
        image = cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)
    canvas_width = max(width, MIN_WIDTH)
    size = max(14, round(canvas_width / 46))
    header = _band(
        canvas_width, [(CAUTION, _WHITE, _RED)] + [(line, _WHITE, _BLACK) for line in result_lines], size
    )
    footer_parts = [_legend(canvas_width, size, heat.colormap)] if heat is not None else []
    footer_parts.append(
        _band(canvas_width, [(line, _GREY, _BLACK) for line in model_lines] + [(CAUTION, _WHITE, _RED)], size)
    )
    x0 = (canvas_width - width) // 2
    middle = np.zeros((height, canvas_width, 3), np.uint8)
    middle[:, x0 : x0 + width] = image
    picture = np.vstack([header, middle, *footer_parts])
    y0 = header.shape[0]
    return np.ascontiguousarray(picture), Layout(
        canvas_width, picture.shape[0], (x0, y0, x0 + width, y0 + height)
    )
