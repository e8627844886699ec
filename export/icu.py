"""The ICU artefact renderer: what a ward film carries that an outpatient film does not.

Almost every COVID film in the training data is a paper figure of a very ill patient (supine AP
portable, tubes, lines, ECG leads, burned-in text), almost every negative an outpatient PA film. A
classifier learns "ICU film" as "COVID", and an input check fitted on clean films refuses real ward films.
This module paints, onto a decoded 8-bit grayscale film, what the ward adds:

- devices (`paint_devices`): endotracheal and nasogastric tubes, central lines, ECG wires and electrodes,
  a pacemaker with its leads, a port, surgical clips and sternal wires, drawn as thin bright curves and
  shapes of varying width, brightness and opacity over the lung box;
- burned-in text and markers (`burn_text`): "PORTABLE", "AP", side markers, dates, in the corners;
- the film (`film_geometry`, `exposure`): tilted up to +-15 degrees inside black or white collimation
  borders, a mild AP perspective, low contrast, burnt-out or washed-out exposure, quantum noise.

It is used three ways: augmenting training films of every label (export.train, so devices stop carrying
the label), augmenting the radiograph class of the view model (export.viewmodel, so a sick patient's film
stays a radiograph), and a counterfactual evaluation (export.shortcuts) and hard genuine set
(export.domaineval). The evaluation draws with `HELD_OUT`, a style whose shapes, widths, positions and
fonts differ from `TRAIN`'s, so the figure measures invariance to devices, not memory of our drawings.

Everything is drawn with OpenCV on the film's own pixel grid; positions are fractions of the lung box
(x0, y0, x1, y1) the segmenter found, so a tube runs down the midline of *this* patient's chest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

Box = tuple[int, int, int, int]

_SHIFT = 2  # cv2 sub-pixel bits: coordinates are drawn at 1/4 px
_SCALE = 1 << _SHIFT


@dataclass(frozen=True)
class Style:
    """One family of renderer settings. Widths and radii are fractions of the lung box's width."""

    name: str
    curve: str  # "bezier": smooth quadratic curves; "wavy": cubic curves with a sinusoidal wobble
    line_width: tuple[float, float]
    tube_width: tuple[float, float]  # the endotracheal tube's lucent body
    level: tuple[float, float]  # grey level of radiopaque parts
    opacity: tuple[float, float]
    electrode: str  # "disc": filled disc with a bright centre; "ring": ring with a square snap
    electrode_radius: tuple[float, float]
    electrodes: tuple[int, int]  # how many (inclusive range)
    pacemaker: str  # "rounded": rounded box; "oval": ellipse can
    line_entry: str  # "subclavian" or "jugular": where a central line enters
    ng_side: int  # +1: the nasogastric tube ends on the image's right (patient's left), -1 left
    fonts: tuple[int, ...]
    words: tuple[str, ...]
    corners: tuple[str, ...]  # where text is burned in: "tl", "tr", "bl", "br", "ml", "mr"
    text_height: tuple[float, float]  # fraction of the image height
    p_device: dict[str, float]


TRAIN = Style(
    name="train",
    curve="bezier",
    line_width=(0.005, 0.02),
    tube_width=(0.04, 0.07),
    level=(175.0, 255.0),
    opacity=(0.45, 0.95),
    electrode="disc",
    electrode_radius=(0.016, 0.032),
    electrodes=(2, 5),
    pacemaker="rounded",
    line_entry="subclavian",
    ng_side=1,
    fonts=(cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_PLAIN),
    words=("PORTABLE", "AP", "SUPINE", "L", "R", "ERECT", "UPRIGHT", "CHEST", "MOBILE"),
    corners=("tl", "tr", "ml"),
    text_height=(0.02, 0.045),
    p_device={
        "et_tube": 0.5,
        "ng_tube": 0.5,
        "central_line": 0.5,
        "ecg": 0.7,
        "pacemaker": 0.2,
        "port": 0.15,
        "clips": 0.2,
        "sternal_wires": 0.15,
    },
)
"""What training draws with (export.train, export.viewmodel)."""

HELD_OUT = Style(
    name="held-out",
    curve="wavy",
    line_width=(0.012, 0.032),
    tube_width=(0.06, 0.09),
    level=(150.0, 250.0),
    opacity=(0.4, 0.9),
    electrode="ring",
    electrode_radius=(0.028, 0.045),
    electrodes=(3, 6),
    pacemaker="oval",
    line_entry="jugular",
    ng_side=-1,
    fonts=(cv2.FONT_HERSHEY_COMPLEX, cv2.FONT_HERSHEY_TRIPLEX, cv2.FONT_HERSHEY_COMPLEX_SMALL),
    words=("ICU", "BEDSIDE", "SEMI-ERECT", "AP SITTING", "LT", "RT", "14:32", "03/11", "PORT", "BED 7"),
    corners=("bl", "br", "mr"),
    text_height=(0.03, 0.06),
    p_device={
        "et_tube": 0.7,
        "ng_tube": 0.6,
        "central_line": 0.6,
        "ecg": 0.8,
        "pacemaker": 0.3,
        "port": 0.25,
        "clips": 0.3,
        "sternal_wires": 0.25,
    },
)
"""What the counterfactual evaluation and the hard genuine set draw with: other curves, wider lines,
rings instead of discs, oval pacemakers, jugular lines, the tube on the other side, other fonts, words and
corners. Nothing is fitted on it."""


def default_box(image: np.ndarray) -> Box:
    """A lung box guessed from the frame when no segmenter is at hand: the middle of the film."""
    height, width = image.shape[:2]
    return int(0.12 * width), int(0.12 * height), int(0.88 * width), int(0.82 * height)


def _points(anchors: np.ndarray, style: Style, rng: np.random.Generator, samples: int = 48) -> np.ndarray:
    """A smooth curve through/near `anchors` (k x 2 float px): quadratic or cubic Bezier, wavy in HELD_OUT."""
    t = np.linspace(0.0, 1.0, samples)[:, None]
    if len(anchors) == 3:
        a, b, c = anchors
        curve = (1 - t) ** 2 * a + 2 * (1 - t) * t * b + t**2 * c
    else:
        a, b, c, d = anchors[:4]
        curve = (1 - t) ** 3 * a + 3 * (1 - t) ** 2 * t * b + 3 * (1 - t) * t**2 * c + t**3 * d
    if style.curve == "wavy":
        tangent = np.gradient(curve, axis=0)
        normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
        normal /= np.linalg.norm(normal, axis=1, keepdims=True) + 1e-6
        length = float(np.sum(np.linalg.norm(np.diff(curve, axis=0), axis=1)))
        amplitude = rng.uniform(0.004, 0.012) * length
        wobble = amplitude * np.sin(2 * np.pi * rng.uniform(1.5, 4.0) * t[:, 0] + rng.uniform(0, 2 * np.pi))
        curve = curve + normal * wobble[:, None]
    return np.asarray(curve)


class _Canvas:
    """Composites radiopaque shapes onto a float copy of the film: out = img + (level - img) * alpha."""

    def __init__(self, image: np.ndarray) -> None:
        self.values = image.astype(np.float32)
        self.shape = image.shape[:2]

    def layer(self) -> np.ndarray:
        return np.zeros(self.shape, np.uint8)

    def blend(self, mask: np.ndarray, level: float, opacity: float, blur: float = 0.6) -> None:
        alpha = mask.astype(np.float32) / 255.0
        if blur > 0:
            alpha = np.asarray(cv2.GaussianBlur(alpha, (0, 0), blur), np.float32)
        self.values += (level - self.values) * (alpha * opacity)

    def result(self) -> np.ndarray:
        return np.clip(self.values, 0, 255).astype(np.uint8)


def _poly(mask: np.ndarray, curve: np.ndarray, width: float) -> None:
    points = np.round(curve * _SCALE).astype(np.int32).reshape(-1, 1, 2)
    cv2.polylines(mask, [points], False, 255, max(1, round(width)), cv2.LINE_AA, _SHIFT)


def _circle(mask: np.ndarray, centre: Sequence[float] | np.ndarray, radius: float, thickness: int) -> None:
    point = (round(centre[0] * _SCALE), round(centre[1] * _SCALE))
    cv2.circle(mask, point, max(1, round(radius * _SCALE)), 255, thickness, cv2.LINE_AA, _SHIFT)


class _Frame:
    """Lung-box coordinates: fx(0) is the box's left edge, fx(1) its right; fy likewise."""

    def __init__(self, box: Box, image: np.ndarray) -> None:
        self.x0, self.y0, self.x1, self.y1 = (float(v) for v in box)
        self.width = max(8.0, self.x1 - self.x0)
        self.height = max(8.0, self.y1 - self.y0)
        self.image_h, self.image_w = image.shape[:2]

    def at(self, fx: float, fy: float) -> np.ndarray:
        return np.array([self.x0 + fx * self.width, self.y0 + fy * self.height])

    def px(self, fraction: float) -> float:
        return fraction * self.width


def _u(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def _et_tube(canvas: _Canvas, frame: _Frame, style: Style, rng: np.random.Generator) -> None:
    """A lucent tube body down the trachea with a radiopaque stripe along one side, tip above the carina."""
    mid = 0.5 + rng.uniform(-0.04, 0.04)
    top = np.array([frame.at(mid, 0)[0] + rng.uniform(-0.1, 0.1) * frame.width, -5.0])
    tip = frame.at(mid + rng.uniform(-0.02, 0.02), rng.uniform(0.08, 0.3))
    bend = (top + tip) / 2 + np.array([rng.uniform(-0.05, 0.05) * frame.width, 0])
    curve = _points(np.stack([top, bend, tip]), style, rng)
    body = canvas.layer()
    _poly(body, curve, frame.px(_u(rng, style.tube_width)))
    canvas.blend(body, _u(rng, (150, 220)), rng.uniform(0.12, 0.3), blur=1.5)
    stripe = canvas.layer()
    _poly(stripe, curve + np.array([frame.px(0.012), 0]), frame.px(_u(rng, style.line_width)))
    canvas.blend(stripe, _u(rng, style.level), _u(rng, style.opacity))


def _ng_tube(canvas: _Canvas, frame: _Frame, style: Style, rng: np.random.Generator) -> None:
    """Down the oesophagus, across the diaphragm, curling in the stomach (below the lung box)."""
    side = style.ng_side
    start = np.array([frame.at(0.5 + rng.uniform(-0.05, 0.05), 0)[0], -5.0])
    chest = frame.at(0.5 + side * rng.uniform(0.0, 0.06), rng.uniform(0.4, 0.6))
    belly = frame.at(0.5 + side * rng.uniform(0.15, 0.3), rng.uniform(1.0, 1.2))
    end = frame.at(0.5 + side * rng.uniform(0.05, 0.35), rng.uniform(1.05, 1.3))
    curve = _points(np.stack([start, chest, belly, end]), style, rng)
    mask = canvas.layer()
    _poly(mask, curve, frame.px(_u(rng, style.line_width)))
    canvas.blend(mask, _u(rng, style.level), _u(rng, style.opacity))


def _central_line(canvas: _Canvas, frame: _Frame, style: Style, rng: np.random.Generator) -> None:
    """Subclavian (from the shoulder) or internal jugular (from the neck) into the superior vena cava."""
    side = float(rng.choice([-1, 1]))
    outer = 0.5 + side * 0.5
    if style.line_entry == "subclavian":
        entry = frame.at(outer + side * rng.uniform(0.0, 0.15), rng.uniform(-0.05, 0.08))
        turn = frame.at(0.5 + side * rng.uniform(0.1, 0.2), rng.uniform(0.02, 0.12))
    else:
        entry = frame.at(0.5 + side * rng.uniform(0.1, 0.25), rng.uniform(-0.35, -0.15))
        turn = frame.at(0.5 + side * rng.uniform(0.05, 0.12), rng.uniform(0.0, 0.1))
    tip = frame.at(0.5 - 0.08 + rng.uniform(-0.03, 0.03), rng.uniform(0.25, 0.4))
    curve = _points(np.stack([entry, turn, tip]), style, rng)
    mask = canvas.layer()
    _poly(mask, curve, frame.px(_u(rng, style.line_width)))
    canvas.blend(mask, _u(rng, style.level), _u(rng, style.opacity))


def _electrode(
    canvas: _Canvas, centre: np.ndarray, radius: float, style: Style, rng: np.random.Generator
) -> None:
    pad = canvas.layer()
    if style.electrode == "disc":
        _circle(pad, centre, radius, -1)
        canvas.blend(pad, _u(rng, (120, 200)), rng.uniform(0.25, 0.5))
        snap = canvas.layer()
        _circle(snap, centre, radius * rng.uniform(0.25, 0.4), -1)
        canvas.blend(snap, _u(rng, style.level), rng.uniform(0.8, 1.0))
    else:
        _circle(pad, centre, radius, max(1, int(radius * 0.25)))
        canvas.blend(pad, _u(rng, style.level), rng.uniform(0.5, 0.9))
        snap = canvas.layer()
        half = radius * rng.uniform(0.2, 0.35)
        corner0 = np.round((centre - half) * _SCALE).astype(int)
        corner1 = np.round((centre + half) * _SCALE).astype(int)
        cv2.rectangle(snap, tuple(corner0), tuple(corner1), 255, -1, cv2.LINE_AA, _SHIFT)
        canvas.blend(snap, _u(rng, style.level), rng.uniform(0.8, 1.0))


def _ecg(canvas: _Canvas, frame: _Frame, style: Style, rng: np.random.Generator) -> None:
    """Electrodes over the chest (shoulders, flanks, anywhere on the lungs), each with a wire that leaves
    the film over the chest."""
    for _ in range(int(rng.integers(style.electrodes[0], style.electrodes[1] + 1))):
        centre = frame.at(rng.uniform(-0.1, 1.1), rng.uniform(-0.15, 1.05))
        radius = frame.px(_u(rng, style.electrode_radius))
        _electrode(canvas, centre, radius, style, rng)
        if rng.random() < 0.85:
            exit_side = rng.integers(4)
            far = {
                0: np.array([-5.0, rng.uniform(0, frame.image_h)]),
                1: np.array([frame.image_w + 5.0, rng.uniform(0, frame.image_h)]),
                2: np.array([rng.uniform(0, frame.image_w), -5.0]),
                3: np.array([rng.uniform(0, frame.image_w), frame.image_h + 5.0]),
            }[int(exit_side)]
            middle = frame.at(rng.uniform(0.0, 1.0), rng.uniform(0.0, 1.0))
            curve = _points(np.stack([centre, middle, far]), style, rng)
            wire = canvas.layer()
            _poly(wire, curve, max(1.0, frame.px(_u(rng, style.line_width)) * 0.7))
            canvas.blend(wire, _u(rng, style.level), _u(rng, style.opacity) * 0.8)


def _pacemaker(canvas: _Canvas, frame: _Frame, style: Style, rng: np.random.Generator) -> None:
    """A bright can below a clavicle, its leads curving into the heart."""
    side = float(rng.choice([-1, 1], p=[0.25, 0.75]))
    centre = frame.at(0.5 + side * rng.uniform(0.3, 0.48), rng.uniform(-0.02, 0.15))
    w, h = frame.px(rng.uniform(0.1, 0.16)), frame.px(rng.uniform(0.07, 0.11))
    can = canvas.layer()
    if style.pacemaker == "rounded":
        r = int(min(w, h) * 0.3)
        x0, y0 = int(centre[0] - w / 2), int(centre[1] - h / 2)
        cv2.rectangle(can, (x0 + r, y0), (int(x0 + w - r), int(y0 + h)), 255, -1, cv2.LINE_AA)
        cv2.rectangle(can, (x0, y0 + r), (int(x0 + w), int(y0 + h - r)), 255, -1, cv2.LINE_AA)
        for cx, cy in (
            (x0 + r, y0 + r),
            (x0 + w - r, y0 + r),
            (x0 + r, y0 + h - r),
            (x0 + w - r, y0 + h - r),
        ):
            cv2.circle(can, (int(cx), int(cy)), r, 255, -1, cv2.LINE_AA)
    else:
        axes = (max(2, int(w / 2)), max(2, int(h / 2)))
        point = (int(centre[0]), int(centre[1]))
        cv2.ellipse(can, point, axes, rng.uniform(-30, 30), 0, 360, 255, -1, cv2.LINE_AA)
    canvas.blend(can, _u(rng, (225, 255)), rng.uniform(0.85, 1.0))
    for _ in range(int(rng.integers(1, 3))):
        heart = frame.at(0.5 + rng.uniform(-0.05, 0.2), rng.uniform(0.55, 0.8))
        bend = frame.at(0.5 + side * rng.uniform(0.0, 0.2), rng.uniform(0.1, 0.35))
        lead = canvas.layer()
        _poly(
            lead,
            _points(np.stack([centre, bend, heart]), style, rng),
            frame.px(_u(rng, style.line_width)) * 1.3,
        )
        canvas.blend(lead, _u(rng, style.level), rng.uniform(0.7, 1.0))


def _port(canvas: _Canvas, frame: _Frame, style: Style, rng: np.random.Generator) -> None:
    """A port reservoir (ring or disc) on the upper chest with its catheter."""
    side = float(rng.choice([-1, 1]))
    centre = frame.at(0.5 + side * rng.uniform(0.2, 0.4), rng.uniform(0.05, 0.25))
    radius = frame.px(rng.uniform(0.03, 0.05))
    ring = canvas.layer()
    _circle(ring, centre, radius, -1 if style.electrode == "disc" else max(1, int(radius * 0.35)))
    canvas.blend(ring, _u(rng, (200, 255)), rng.uniform(0.7, 1.0))
    tip = frame.at(0.42 + rng.uniform(-0.03, 0.03), rng.uniform(0.25, 0.4))
    catheter = canvas.layer()
    bend = frame.at(0.5 + side * 0.1, rng.uniform(-0.05, 0.05))
    _poly(catheter, _points(np.stack([centre, bend, tip]), style, rng), frame.px(_u(rng, style.line_width)))
    canvas.blend(catheter, _u(rng, style.level), _u(rng, style.opacity))


def _clips(canvas: _Canvas, frame: _Frame, style: Style, rng: np.random.Generator) -> None:
    """Small bright surgical clips: short strokes or 'V's scattered near the hila and mediastinum."""
    mask = canvas.layer()
    for _ in range(int(rng.integers(2, 7))):
        centre = frame.at(rng.uniform(0.25, 0.75), rng.uniform(0.15, 0.8))
        length = frame.px(rng.uniform(0.02, 0.045))
        angle = rng.uniform(0, np.pi)
        d = np.array([np.cos(angle), np.sin(angle)]) * length / 2
        width = max(1.0, frame.px(_u(rng, style.line_width)))
        if style.curve == "bezier":
            _poly(mask, np.stack([centre - d, centre + d]), width)
        else:
            e = np.array([np.cos(angle + 0.6), np.sin(angle + 0.6)]) * length / 2
            _poly(mask, np.stack([centre - d, centre, centre - e]), width)
    canvas.blend(mask, _u(rng, (220, 255)), rng.uniform(0.8, 1.0))


def _sternal_wires(canvas: _Canvas, frame: _Frame, style: Style, rng: np.random.Generator) -> None:
    """Loops of wire down the midline (after a sternotomy)."""
    mask = canvas.layer()
    count = int(rng.integers(3, 7))
    x = frame.at(0.5 + rng.uniform(-0.03, 0.03), 0)[0]
    for index in range(count):
        y = frame.at(0, 0.1 + 0.55 * index / max(1, count - 1))[1]
        axes = (
            max(1, int(frame.px(rng.uniform(0.015, 0.03)))),
            max(1, int(frame.px(rng.uniform(0.008, 0.015)))),
        )
        thickness = max(1, round(frame.px(_u(rng, style.line_width))))
        tilt = rng.uniform(-20, 20) if style.curve == "bezier" else rng.uniform(60, 120)
        cv2.ellipse(mask, (int(x), int(y)), axes, tilt, 0, 360, 255, thickness, cv2.LINE_AA)
    canvas.blend(mask, _u(rng, (220, 255)), rng.uniform(0.8, 1.0))


DEVICES = {
    "et_tube": _et_tube,
    "ng_tube": _ng_tube,
    "central_line": _central_line,
    "ecg": _ecg,
    "pacemaker": _pacemaker,
    "port": _port,
    "clips": _clips,
    "sternal_wires": _sternal_wires,
}


def paint_devices(image: np.ndarray, box: Box, rng: np.random.Generator, style: Style = TRAIN) -> np.ndarray:
    """A copy of `image` (uint8 H x W) with devices drawn over the chest in the lung box `box`. At least
    one device is always drawn."""
    canvas = _Canvas(image)
    frame = _Frame(box, image)
    chosen = [name for name, p in style.p_device.items() if rng.random() < p]
    if not chosen:
        chosen = [str(rng.choice(list(style.p_device)))]
    for name in chosen:
        DEVICES[name](canvas, frame, style, rng)
    return canvas.result()


def burn_text(image: np.ndarray, rng: np.random.Generator, style: Style = TRAIN) -> np.ndarray:
    """A copy with 1-3 burned-in labels (words, side markers, times) in the style's corners: white text,
    sometimes on a dark box, sometimes a black letter in a white lead-marker square."""
    marked = image.copy()
    height, width = image.shape[:2]
    for _ in range(int(rng.integers(1, 4))):
        text = str(rng.choice(style.words))
        font = int(rng.choice(style.fonts))
        target = _u(rng, style.text_height) * height
        (_base_w, base_h), _ = cv2.getTextSize(text, font, 1.0, 1)
        scale = target / max(1, base_h)
        thickness = max(1, round(scale * rng.uniform(1.0, 2.5)))
        (tw, th), baseline = cv2.getTextSize(text, font, scale, thickness)
        corner = str(rng.choice(style.corners))
        margin = int(rng.uniform(0.01, 0.05) * width)
        x = margin if corner[1] == "l" else max(0, width - tw - margin)
        y = {"t": margin + th, "b": height - margin - baseline, "m": int(height * rng.uniform(0.3, 0.6))}[
            corner[0]
        ]
        kind = rng.random()
        if kind < 0.25:  # a lead marker: black letter in a white square
            pad = max(2, th // 4)
            cv2.rectangle(marked, (x - pad, y - th - pad), (x + tw + pad, y + baseline + pad), 255, -1)
            cv2.putText(marked, text, (x, y), font, scale, 0, thickness, cv2.LINE_AA)
        elif kind < 0.45:  # text on a dark box
            pad = max(2, th // 5)
            cv2.rectangle(marked, (x - pad, y - th - pad), (x + tw + pad, y + baseline + pad), 0, -1)
            cv2.putText(marked, text, (x, y), font, scale, 255, thickness, cv2.LINE_AA)
        else:
            level = int(rng.uniform(200, 256))
            cv2.putText(marked, text, (x, y), font, scale, level, thickness, cv2.LINE_AA)
    return marked


def film_geometry(
    image: np.ndarray, box: Box, rng: np.random.Generator, max_tilt: float = 15.0
) -> tuple[np.ndarray, Box]:
    """(the film tilted by up to `max_tilt` degrees with a mild AP perspective, framed by black or white
    collimation borders; the lung box moved with it)."""
    height, width = image.shape[:2]
    fill = int(rng.choice([0, 255], p=[0.7, 0.3]))
    # Collimation: the exposed field is smaller than the detector; outside it the film is flat.
    top, bottom = (int(rng.uniform(0, 0.08) * height) for _ in range(2))
    left, right = (int(rng.uniform(0, 0.08) * width) for _ in range(2))
    fh, fw = height + top + bottom, width + left + right
    # AP supine: the source is nearer and the patient not square to it; a keystone of a few percent.
    squeeze = rng.uniform(-0.05, 0.05) * fw
    source = np.array([[0, 0], [fw, 0], [fw, fh], [0, fh]], np.float32)
    target = np.array([[squeeze, 0], [fw - squeeze, 0], [fw, fh], [0, fh]], np.float32)
    perspective = cv2.getPerspectiveTransform(source, target)
    rotation = np.vstack(
        [cv2.getRotationMatrix2D((fw / 2, fh / 2), rng.uniform(-max_tilt, max_tilt), 1.0), [0, 0, 1]]
    )
    shift = np.array([[1, 0, left], [0, 1, top], [0, 0, 1]], np.float64)
    matrix = rotation @ perspective @ shift  # original pixel -> output pixel
    out = cv2.warpPerspective(
        image, matrix, (fw, fh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=fill
    )
    x0, y0, x1, y1 = box
    corners = np.array([[[x0, y0]], [[x1, y0]], [[x1, y1]], [[x0, y1]]], np.float32)
    moved = np.asarray(cv2.perspectiveTransform(corners, matrix))[:, 0]
    new_box = (
        int(max(0, moved[:, 0].min())),
        int(max(0, moved[:, 1].min())),
        int(min(fw, moved[:, 0].max())),
        int(min(fh, moved[:, 1].max())),
    )
    return out, new_box


def exposure(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Portable-film exposure: low contrast (fog), burnt out (dark, little detail) or washed out (light,
    noisy)."""
    values = image.astype(np.float32) / 255.0
    kind = rng.integers(3)
    if kind == 0:
        mean = float(values.mean())
        values = mean + (values - mean) * rng.uniform(0.4, 0.75) + rng.uniform(-0.05, 0.1)
    elif kind == 1:
        values = values ** rng.uniform(1.4, 2.2)
    else:
        values = values ** rng.uniform(0.45, 0.7)
        values = values + rng.normal(0, rng.uniform(0.01, 0.035), values.shape)
    return np.clip(values * 255.0, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Recipe:
    """Which parts of a ward film to render, each with its probability."""

    devices: float = 1.0
    text: float = 0.5
    geometry: float = 0.5
    exposure: float = 0.35
    max_tilt: float = 15.0


WARD = Recipe()


def icu_film(
    image: np.ndarray,
    box: Box | None,
    rng: np.random.Generator,
    style: Style = TRAIN,
    recipe: Recipe = WARD,
) -> tuple[np.ndarray, Box]:
    """(a ward version of the film, its lung box): devices, text, tilt and borders, exposure, each by
    `recipe`'s probability."""
    box = box if box is not None else default_box(image)
    if rng.random() < recipe.devices:
        image = paint_devices(image, box, rng, style)
    if rng.random() < recipe.text:
        image = burn_text(image, rng, style)
    if rng.random() < recipe.exposure:
        image = exposure(image, rng)
    if rng.random() < recipe.geometry:
        image, box = film_geometry(image, box, rng, recipe.max_tilt)
    return image, box
