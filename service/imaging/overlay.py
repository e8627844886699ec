"""The class activation map drawn on the radiograph: one blend, shared by `cxr predict --heatmap`,
`cxr evaluate`'s CAM grid and the Secondary Capture `cxr pacs` writes, so every picture of a heatmap is
made the same way (the web page draws the same Jet map in the browser, service/api/static/app.js).

Input is the heatmap as /v1/classify?heatmap=true returns it (`service.imaging.preprocess.cam_levels`: uint8,
255 at the map's own maximum) on the grid of the grey image it is blended onto.
"""

from __future__ import annotations

import cv2
import numpy as np

from service.imaging.preprocess import Geometry, cam_levels

COLORMAPS: dict[str, int] = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "inferno": cv2.COLORMAP_INFERNO,
    "magma": cv2.COLORMAP_MAGMA,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "hot": cv2.COLORMAP_HOT,
}
"""Names accepted for `colormap` (OpenCV's maps); Jet is what the web page and `cxr predict` draw."""

DEFAULT_COLORMAP = "jet"
DEFAULT_OPACITY = 0.45


def colorize(levels: np.ndarray, colormap: str = DEFAULT_COLORMAP) -> np.ndarray:
    """uint8 levels (any shape) -> BGR uint8 colours of `colormap`."""
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap {colormap!r}; choose one of {', '.join(COLORMAPS)}")
    return np.asarray(cv2.applyColorMap(np.ascontiguousarray(levels, dtype=np.uint8), COLORMAPS[colormap]))


def blend(
    gray: np.ndarray,
    levels: np.ndarray,
    *,
    colormap: str = DEFAULT_COLORMAP,
    opacity: float = DEFAULT_OPACITY,
) -> np.ndarray:
    """BGR uint8: the grey image (uint8, 2-D) with the heat levels (same shape) coloured over it at
    `opacity` (0 shows the radiograph only, 1 the map only)."""
    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError("gray must be a 2-D uint8 image")
    if levels.shape != gray.shape:
        raise ValueError(f"levels {levels.shape} and image {gray.shape} differ in shape")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError("opacity must be within [0, 1]")
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    return np.asarray(cv2.addWeighted(base, 1.0 - opacity, colorize(levels, colormap), opacity, 0.0))


def cam_overlay(pixels: np.ndarray, cam: np.ndarray, geometry: Geometry, alpha: float = 0.45) -> np.ndarray:
    """BGR image: the decoded X-ray with the positive-class CAM (scaled to its own max) as a heat overlay."""
    heat, _ = cam_levels(cam, geometry)  # the levels /v1/classify?heatmap=true returns
    mixed = blend(pixels, heat, opacity=alpha)  # the one overlay, also drawn into the PACS's SC
    if not geometry.turns % 4:  # the box is on the turned-back film's grid otherwise
        x0, y0, x1, y1 = geometry.box
        cv2.rectangle(mixed, (x0, y0), (x1 - 1, y1 - 1), (255, 255, 255), 1)
    return mixed
