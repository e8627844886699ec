"""The input-domain verdict: is this a frontal chest radiograph, the right way up, with the right polarity?

Runs inside `OnnxModel.prepare()`, so the service, `cxr predict`, `cxr evaluate` and the PACS pass cannot
classify an image without it. Checks, cheapest first; each failing one adds a reason:

1. size: a radiograph has at least `min_side` px on its shorter side (a 1x1 PNG has none of a chest);
2. colour: a radiograph is grayscale; `colour_fraction` (service.decode) is the share of pixels whose
   channels differ by 24 levels or more (a coloured arrow on a figure stays far below the limit);
3. the view model (`view.onnx` beside the classifier, trained by `cxr train-view` on the training split's
   own films turned, inverted and mixed with rendered non-radiographs): p(not a chest radiograph), which
   way up and which polarity, and the Mahalanobis distance of its features to the training films' (an
   open-set score: large for anything unlike the films, including kinds no one rendered);
4. the lungs: the lung segmenter, run on the image as the classifier will see it, must find two lung
   fields of plausible size side by side.

A film that the view model finds turned or inverted with confidence `correct_min` is turned back and/or
inverted (both exact, lossless operations), checked again (the corrected film must look upright with the
same confidence) and classified: verdict "corrected", with the reason. Anything else that fails a check is
"out". Thresholds live in the model card (`domain`), chosen on the training
and validation splits by `cxr train-view`, never on the test split or the held-out kinds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from service.preprocess import Geometry, LungFields, PreprocessSpec, finish, trim_borders

Verdict = Literal["in", "out", "corrected"]

VIEW_CLASSES = (
    "upright",
    "turned 90 clockwise",
    "upside down",
    "turned 90 counter-clockwise",
    "inverted",
    "inverted, turned 90 clockwise",
    "inverted, upside down",
    "inverted, turned 90 counter-clockwise",
    "not a chest radiograph",
)
"""The view model's outputs. Class k < 8 is an upright film turned by (k % 4) quarter turns clockwise,
inverted when k >= 4; undo with np.rot90(image, k % 4) (counter-clockwise) and 255 - image."""
NOT_RADIOGRAPH = len(VIEW_CLASSES) - 1


@dataclass(frozen=True)
class DomainSpec:
    """The card's `domain` section: the view model file and every threshold the verdict uses. A card
    without the section (`enabled` False: models made before the check, the tests' tiny model) gets no
    check: every image is "in", with a reason saying it was not checked."""

    enabled: bool = False
    view_model: str | None = None
    input_size: int = 64
    min_side: int = 128
    max_colour_fraction: float = 0.10
    max_not_radiograph: float = 0.5
    max_distance: float = float("inf")
    correct_min: float = 0.9
    min_lung_area: float = 0.02  # each of the two largest components, as a fraction of the trimmed image
    max_lung_centre_dy: float = 0.35  # vertical offset of the two fields' centres, fraction of height
    min_lung_centre_dx: float = 0.15  # horizontal distance between the two fields' centres, fraction of width

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> DomainSpec:
        if values is None:
            return cls()
        thresholds = dict(values.get("thresholds", {}))
        known = {k: v for k, v in thresholds.items() if k in cls.__dataclass_fields__ and k != "enabled"}
        return cls(True, values.get("file"), int(values.get("input_size", 64)), **known)


UNCHECKED = "not checked: this model version's card has no input-domain check"


@dataclass(frozen=True)
class DomainVerdict:
    """What the check found; `to_dict()` is the `domain` field of every result."""

    verdict: Verdict
    reasons: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    turns: int = 0  # quarter turns counter-clockwise applied to the pixels
    inverted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.verdict, "reasons": list(self.reasons), "scores": dict(self.scores)}

    @property
    def summary(self) -> str:
        """One line for a flag, a CLI or a problem detail."""
        return "; ".join(self.reasons) or "looks like a frontal chest radiograph"


def view_input(image: np.ndarray, spec: PreprocessSpec, size: int) -> np.ndarray:
    """The view model's input: the border-trimmed image squashed to size x size, CLAHE, [0, 1] (H, W)."""
    x0, y0, x1, y1 = trim_borders(image, spec)
    if x1 - x0 < 8 or y1 - y0 < 8:
        x0, y0, x1, y1 = 0, 0, image.shape[1], image.shape[0]
    small = cv2.resize(image[y0:y1, x0:x1], (size, size), interpolation=cv2.INTER_AREA)
    return finish(small, spec)


class ViewModel:
    """view.onnx: (N, S, S, 1) -> `probabilities` (N, 9) over VIEW_CLASSES and `distance` (N,)."""

    def __init__(self, path: Path, input_size: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # runs in the preprocessing pool, one thread per core already
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.input_size = input_size

    def __call__(self, tensor: np.ndarray) -> tuple[np.ndarray, float]:
        """Averaged over the image and its mirror image: the model was trained with random left-right
        flips in every class, so both should agree; averaging steadies the uncertain cases."""
        both = np.stack([tensor, tensor[:, ::-1]])[:, :, :, None]
        probabilities, distance = self.session.run(["probabilities", "distance"], {self.input_name: both})
        return probabilities.mean(axis=0), float(distance.mean())


class DomainCheck:
    """Steps 1-3 before preprocessing (`inspect`, which may correct the pixels), step 4 after (`lungs`)."""

    def __init__(self, spec: DomainSpec, preprocess: PreprocessSpec, view: ViewModel | None) -> None:
        self.spec = spec
        self.preprocess = preprocess
        self.view = view

    def inspect(self, pixels: np.ndarray, colour_fraction: float) -> tuple[DomainVerdict, np.ndarray]:
        """(verdict so far, the pixels to classify: turned back and/or inverted when corrected)."""
        spec = self.spec
        if not spec.enabled:
            return DomainVerdict("in", [UNCHECKED]), pixels
        reasons: list[str] = []
        scores: dict[str, float] = {"colour_fraction": round(colour_fraction, 4)}
        height, width = pixels.shape
        if min(height, width) < spec.min_side:
            reasons.append(
                f"the image is {width}x{height} px; a chest radiograph needs at least {spec.min_side} px "
                "on its shorter side"
            )
        if colour_fraction > spec.max_colour_fraction:
            reasons.append(
                f"a colour image ({colour_fraction:.0%} of its pixels are coloured); radiographs are grayscale"
            )
        if self.view is None or reasons:
            return DomainVerdict("out" if reasons else "in", reasons, scores), pixels
        probabilities, distance = self.view(view_input(pixels, self.preprocess, self.view.input_size))
        best = int(np.argmax(probabilities[:NOT_RADIOGRAPH]))
        scores |= {
            "not_radiograph": round(float(probabilities[NOT_RADIOGRAPH]), 4),
            "upright": round(float(probabilities[0]), 4),
            "distance": round(distance, 2),
        }
        if probabilities[NOT_RADIOGRAPH] > spec.max_not_radiograph:
            reasons.append(
                f"it does not look like a chest radiograph (view model: {probabilities[NOT_RADIOGRAPH]:.2f})"
            )
        elif distance > spec.max_distance:
            reasons.append(
                f"it is unlike every training film (feature distance {distance:.0f}, limit {spec.max_distance:.0f})"
            )
        if reasons:
            return DomainVerdict("out", reasons, scores), pixels
        if best == 0:
            return DomainVerdict("in", [], scores), pixels
        confidence = float(probabilities[best])
        scores["orientation_confidence"] = round(confidence, 4)
        if confidence < spec.correct_min:
            reasons.append(
                f"the film may be {VIEW_CLASSES[best]} ({confidence:.2f}), too uncertain to correct"
            )
            return DomainVerdict("out", reasons, scores), pixels
        turns, inverted = best % 4, best >= 4
        corrected = np.rot90(pixels, turns) if turns else pixels
        corrected = np.ascontiguousarray(255 - corrected if inverted else corrected)
        # A wrong correction would classify a film turned the wrong way: the corrected film must itself
        # look upright, with the same confidence, or the image is refused.
        after, _ = self.view(view_input(corrected, self.preprocess, self.view.input_size))
        scores["upright_after_correction"] = round(float(after[0]), 4)
        if int(np.argmax(after)) != 0 or after[0] < spec.correct_min:
            reasons.append(
                f"the film may be {VIEW_CLASSES[best]} ({confidence:.2f}), but turned back it does not look "
                f"upright ({after[0]:.2f}): not corrected"
            )
            return DomainVerdict("out", reasons, scores), pixels
        reasons.append(f"the film was {VIEW_CLASSES[best]} ({confidence:.2f}); corrected before classifying")
        return DomainVerdict("corrected", reasons, scores, turns, inverted), corrected

    def lungs(self, verdict: DomainVerdict, geometry: Geometry) -> DomainVerdict:
        """Step 4 on the preprocessed geometry: two lung fields of plausible size, side by side."""
        fields = geometry.lungs
        if fields is None or verdict.verdict == "out":
            return verdict
        problem = lung_problem(fields, self.spec)
        scores = verdict.scores | {
            "lung_areas": round(fields.areas[0] + fields.areas[1], 4),
            "lung_smaller_area": round(fields.areas[1], 4),
        }
        if problem is None:
            return DomainVerdict(verdict.verdict, verdict.reasons, scores, verdict.turns, verdict.inverted)
        return DomainVerdict("out", [*verdict.reasons, problem], scores, verdict.turns, verdict.inverted)


def lung_problem(fields: LungFields, spec: DomainSpec) -> str | None:
    """Why the segmenter's components are not lungs, or None if they may be. A single lung field is
    allowed: a whited-out hemithorax (effusion, collapse, pneumonectomy) is a real frontal film; two fields
    must lie side by side."""
    (left_x, left_y), (right_x, right_y) = fields.centres
    if fields.areas[0] < spec.min_lung_area:
        return f"the lung segmenter found no lung field (largest {fields.areas[0]:.1%} of the image)"
    if fields.areas[1] < spec.min_lung_area:
        return None
    if abs(left_x - right_x) < spec.min_lung_centre_dx:
        return "the two lung fields the segmenter found are not side by side (one above the other)"
    if abs(left_y - right_y) > spec.max_lung_centre_dy:
        return "the two lung fields the segmenter found are not side by side"
    return None
