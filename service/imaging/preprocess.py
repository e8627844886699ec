"""Decoded pixels -> model input tensor: the preprocessing contract, defined once.

Training (`export.dataset`), evaluation, export parity checks, `cxr predict` and the service all call
`preprocess()`; training inserts augmentation between the same steps through `crop_and_finish()`.
A test proves the training and serving paths produce the same tensor for the same file.

The steps and why each exists (the training sources differ in field of view, borders and contrast, and a
CNN learns those differences instead of the disease; see the model card):

1. `decode` (service.imaging.decode): 8-bit grayscale, shorter side 320 px, INTER_AREA (how the training PNGs were made).
2. `trim_borders`: drop uniform rows/columns at the edges (black frames, white paper-figure margins).
3. `lung_box`: the bounding box of both lungs from a small lung segmenter (ONNX, shipped beside the
   classifier), widened by a margin; the whole trimmed image when the mask is implausible.
4. `crop_resize`: crop to that box, resize to the model's square input with INTER_AREA.
5. `finish`: CLAHE (clip 2.0, 8x8 tiles) at the model's resolution, then scale to [0, 1] float32.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import cv2
import numpy as np

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive) in the decoded image's pixel grid
MaskFn = Callable[[np.ndarray], np.ndarray]
"""A lung segmenter: uint8 grayscale image -> float mask in [0, 1] of the same height and width."""


@dataclass(frozen=True)
class PreprocessSpec:
    """The preprocessing contract stored in the model's metadata and card."""

    input_size: int = 224
    clahe_clip: float = 2.0
    clahe_tiles: int = 8
    border_std: float = 2.0
    border_max_fraction: float = 0.25
    lung_crop: bool = True
    lung_margin: float = 0.08
    lung_min_fraction: float = 0.08  # mask area / image area below this -> implausible, keep whole image
    segmenter_size: int = 128

    def to_dict(self) -> dict[str, float | int | bool]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> PreprocessSpec:
        known = {name: values[name] for name in cls.__dataclass_fields__ if name in values}
        return cls(**known)  # type: ignore[arg-type]


@dataclass(frozen=True)
class LungFields:
    """The two largest lung-mask components, as fractions of the trimmed region the segmenter saw:
    what the input-domain check reads to ask whether a frontal chest is there (service.imaging.input_check)."""

    areas: tuple[float, float]  # largest first; 0.0 where there is no such component
    centres: tuple[tuple[float, float], tuple[float, float]]  # (x, y) in [0, 1] of each, same order


NO_LUNGS = LungFields((0.0, 0.0), ((0.5, 0.5), (0.5, 0.5)))


@dataclass(frozen=True)
class Geometry:
    """Where the model input came from: registers the CAM back onto the decoded image.

    `height`, `width` and `box` refer to the image the model saw, which the input-domain check may have
    turned (`turns` quarter turns counter-clockwise, np.rot90) and inverted; `register_cam` puts the map
    back onto the uploaded image's grid."""

    height: int
    width: int
    box: Box
    lung_crop: str  # "mask", "fallback" (implausible mask) or "off"
    lungs: LungFields | None = None  # None without a segmenter
    turns: int = 0
    inverted: bool = False


def trim_borders(image: np.ndarray, spec: PreprocessSpec) -> Box:
    """Box without uniform edge rows/columns (std below `border_std`), trimming at most a fraction per side."""
    height, width = image.shape
    row_std = image.std(axis=1)
    col_std = image.std(axis=0)
    max_rows = int(height * spec.border_max_fraction)
    max_cols = int(width * spec.border_max_fraction)

    def _count(values: np.ndarray, limit: int) -> int:
        flat = values[:limit] < spec.border_std
        return int(np.argmin(flat)) if not flat.all() else limit

    top = _count(row_std, max_rows)
    bottom = height - _count(row_std[::-1], max_rows)
    left = _count(col_std, max_cols)
    right = width - _count(col_std[::-1], max_cols)
    return left, top, right, bottom


def segmenter_input(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """The lung segmenter's input for a (trimmed) image: square resize, CLAHE, [0, 1] float32 (H, W)."""
    size = spec.segmenter_size
    small = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return finish(small, spec)


def _fields(
    stats: np.ndarray, centroids: np.ndarray, order: np.ndarray, shape: tuple[int, int]
) -> LungFields:
    height, width = shape
    areas = [float(stats[i, cv2.CC_STAT_AREA]) / (height * width) for i in order]
    centres = [(float(centroids[i, 0]) / width, float(centroids[i, 1]) / height) for i in order]
    while len(areas) < 2:
        areas.append(0.0)
        centres.append((0.5, 0.5))
    return LungFields((areas[0], areas[1]), (centres[0], centres[1]))


def lung_box(
    image: np.ndarray, within: Box, spec: PreprocessSpec, segment: MaskFn | None
) -> tuple[Box, str, LungFields | None]:
    """Bounding box of the two largest mask components inside `within`, widened by `lung_margin`, and
    what those components look like (None without a segmenter)."""
    if segment is None or not spec.lung_crop:
        return within, "off", None
    x0, y0, x1, y1 = within
    region = image[y0:y1, x0:x1]
    mask = segment(region) >= 0.5
    count, _, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    if count <= 1:
        return within, "fallback", NO_LUNGS
    # Label 0 is background; keep the two largest components (the lungs), ignore specks.
    order = np.argsort(stats[1:, cv2.CC_STAT_AREA])[::-1][:2] + 1
    fields = _fields(stats, centroids, order, mask.shape)
    area = float(stats[order, cv2.CC_STAT_AREA].sum())
    if area < spec.lung_min_fraction * mask.size:
        return within, "fallback", fields
    left = int(stats[order, cv2.CC_STAT_LEFT].min())
    top = int(stats[order, cv2.CC_STAT_TOP].min())
    right = int((stats[order, cv2.CC_STAT_LEFT] + stats[order, cv2.CC_STAT_WIDTH]).max())
    bottom = int((stats[order, cv2.CC_STAT_TOP] + stats[order, cv2.CC_STAT_HEIGHT]).max())
    height, width = region.shape
    margin_x = round(spec.lung_margin * (right - left))
    margin_y = round(spec.lung_margin * (bottom - top))
    box = (
        x0 + max(0, left - margin_x),
        y0 + max(0, top - margin_y),
        x0 + min(width, right + margin_x),
        y0 + min(height, bottom + margin_y),
    )
    return box, "mask", fields


def crop_resize(image: np.ndarray, box: Box, size: int) -> np.ndarray:
    x0, y0, x1, y1 = box
    crop = image[y0:y1, x0:x1]
    interpolation = cv2.INTER_AREA if min(crop.shape) >= size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interpolation)


def finish(image: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """CLAHE at the network's resolution (so it does not depend on the source resolution), then [0, 1]."""
    clahe = cv2.createCLAHE(clipLimit=spec.clahe_clip, tileGridSize=(spec.clahe_tiles, spec.clahe_tiles))
    return clahe.apply(image).astype(np.float32) * np.float32(1.0 / 255.0)


def locate(image: np.ndarray, spec: PreprocessSpec, segment: MaskFn | None) -> Geometry:
    """Steps 2-3: where to crop. Training caches this per image; serving computes it per request."""
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 image, got {image.dtype} {image.shape}")
    trimmed = trim_borders(image, spec)
    if trimmed[2] - trimmed[0] < 16 or trimmed[3] - trimmed[1] < 16:
        trimmed = (0, 0, image.shape[1], image.shape[0])
    box, how, lungs = lung_box(image, trimmed, spec, segment)
    return Geometry(image.shape[0], image.shape[1], box, how, lungs)


def crop_and_finish(image: np.ndarray, geometry: Geometry, spec: PreprocessSpec) -> np.ndarray:
    """Steps 4-5: the model input (input_size, input_size, 1) float32."""
    resized = crop_resize(image, geometry.box, spec.input_size)
    return finish(resized, spec)[:, :, None]


def preprocess(
    image: np.ndarray, spec: PreprocessSpec, segment: MaskFn | None
) -> tuple[np.ndarray, Geometry]:
    """Decoded uint8 grayscale -> (model input tensor (S, S, 1) float32, geometry for the CAM)."""
    geometry = locate(image, spec, segment)
    return crop_and_finish(image, geometry, spec), geometry


def register_cam(cam: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Place a CAM (h, w) over the model input back onto the decoded image's grid (zeros outside the crop),
    undoing any turn the input-domain check applied (inversion does not move pixels)."""
    x0, y0, x1, y1 = geometry.box
    full = np.zeros((geometry.height, geometry.width), dtype=np.float32)
    full[y0:y1, x0:x1] = cv2.resize(
        cam.astype(np.float32), (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR
    )
    return np.ascontiguousarray(np.rot90(full, -geometry.turns)) if geometry.turns % 4 else full


def cam_levels(cam: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, float]:
    """The CAM as /v1/classify returns it and `cxr predict --heatmap` draws it, so the two never disagree:
    negative evidence dropped on the model's grid (as Grad-CAM does, before upsampling), registered onto
    the decoded image, scaled by its own maximum -> (uint8 levels, that maximum; zeros and 0.0 when
    nothing is positive)."""
    full = register_cam(np.maximum(cam, 0.0), geometry)
    peak = float(full.max())
    if peak <= 0:
        return np.zeros(full.shape, np.uint8), 0.0
    return np.rint(full * np.float32(255.0 / peak)).astype(np.uint8), peak
