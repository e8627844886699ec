"""The input-domain verdict: is this a frontal chest radiograph, the right way up, with the right polarity?

Runs inside `OnnxModel.prepare()`, so the service, `cxr predict`, `cxr evaluate` and the PACS pass cannot
classify an image without it. Checks, cheapest first; each failing one adds a reason:

1. size: a radiograph has at least `min_side` px on its shorter side (a 1x1 PNG has none of a chest);
2. colour: a radiograph is grayscale; `colour_fraction` (service.imaging.decode) is the share of pixels whose
   channels differ by 24 levels or more (a coloured arrow on a figure stays far below the limit);
3. the view model (`view.onnx` beside the classifier, trained by `cxr train-view` on the training split's
   own films turned, inverted and mirrored, mixed with rendered non-radiographs): p(not a chest
   radiograph), which way up, which polarity, which way round, and the Mahalanobis distance of its
   features to the training films' (an open-set score: large for anything unlike the films, including
   kinds no one rendered);
4. the lungs: the lung segmenter, run on the image as the classifier will see it, must find two lung
   fields of plausible size side by side.

A film that the view model finds turned or inverted with confidence `correct_min` is turned back and/or
inverted (both exact, lossless operations), checked again (the corrected film must look upright with the
same confidence) and classified: verdict "corrected", with the reason. A film it finds mirrored left-right
with that confidence is classified as it is, with a warning among the reasons (and a `domain` flag): the
classifier's score moves when a film is mirrored (the card measures by how much), but mirroring cannot be
checked the way a turn can (the view model sees a mirrored image as the mirror of its own answer) and on
validation films its calls were not sure enough to change pixels on (about 1 % of films the usual way
round called mirrored at 0.9). Anything else that fails a check is "out". Thresholds live in the model card (`domain`), chosen on the training
and validation splits by `cxr train-view`, never on the test split or the held-out kinds.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import cv2
import numpy as np

from service.imaging.preprocess import Geometry, LungFields, PreprocessSpec, finish, trim_borders

Verdict = Literal["in", "out", "corrected"]

_TURNS = ("upright", "turned 90 clockwise", "upside down", "turned 90 counter-clockwise")


def view_class_name(index: int) -> str:
    turns, inverted, mirrored = index % 4, (index // 4) % 2 == 1, index >= 8
    words = [*(["inverted"] if inverted else []), *([_TURNS[turns]] if turns or not inverted else [])]
    return ", ".join([*words, *(["mirrored left-right"] if mirrored else [])])


VIEW_CLASSES = (*(view_class_name(index) for index in range(16)), "not a chest radiograph")
"""The view model's outputs. Film class k < 16 is an upright film mirrored left-right when k >= 8, then
turned (k % 4) quarter turns clockwise, then inverted when (k // 4) is odd; undo in the reverse order
(`undo`)."""
NOT_RADIOGRAPH = len(VIEW_CLASSES) - 1
FILM_CLASSES = NOT_RADIOGRAPH


def make_view(image: np.ndarray, index: int) -> np.ndarray:
    """An upright film -> the same film in view class `index` (training labels, evaluation copies)."""
    mirrored = image[:, ::-1] if index >= 8 else image
    turned = np.rot90(mirrored, -(index % 4))
    return np.ascontiguousarray(255 - turned if (index // 4) % 2 else turned)


def undo(image: np.ndarray, turns: int, inverted: bool) -> np.ndarray:
    """The inverse of make_view for a film the usual way round: un-invert, turn back (counter-clockwise)."""
    image = 255 - image if inverted else image
    return np.ascontiguousarray(np.rot90(image, turns) if turns else image)


MIRROR_PERMUTATION = np.array(
    [*((-(k % 4)) % 4 + 4 * ((k // 4) % 2) + 8 * (1 - k // 8) for k in range(16)), NOT_RADIOGRAPH]
)
"""Class of the mirror image of a film in class k: mirroring a film turned t times gives the mirrored film
turned -t times (np.fliplr(np.rot90(x, -t)) == np.rot90(np.fliplr(x), t)), polarity unchanged."""


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
    def flag(self) -> str | None:
        """The `domain` flag of a classified result: what was corrected or found, None for a plain "in"."""
        if self.verdict == "in" and (not self.reasons or self.reasons == [UNCHECKED]):
            return None
        return f"{self.verdict}: {self.summary}"

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


class ViewScorer(Protocol):
    """The view model as the check uses it (service.inference.view_model.ViewModel runs view.onnx):
    (S, S) input in [0, 1] -> (probabilities over the 17 view classes, feature distance to the films)."""

    input_size: int

    def __call__(self, tensor: np.ndarray) -> tuple[np.ndarray, float]: ...


class DomainCheck:
    """Steps 1-3 before preprocessing (`inspect`, which may correct the pixels), step 4 after (`lungs`)."""

    def __init__(self, spec: DomainSpec, preprocess: PreprocessSpec, view: ViewScorer | None) -> None:
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
        # Way up and polarity, whichever way round; and way round, whichever way up.
        films = probabilities[:FILM_CLASSES]
        orientation = films[:8] + films[8:]
        mirrored_p = float(films[8:].sum())
        best = int(np.argmax(orientation))
        scores |= {
            "not_radiograph": round(float(probabilities[NOT_RADIOGRAPH]), 4),
            "upright": round(float(orientation[0]), 4),
            "mirrored": round(mirrored_p, 4),
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
        if mirrored_p >= spec.correct_min:
            reasons.append(
                f"the film may be mirrored left-right ({mirrored_p:.2f}; or a dextrocardia): classified as it is, "
                "and the score may be off"
            )
        if best == 0:
            return DomainVerdict("in", reasons, scores), pixels
        confidence = float(orientation[best])
        found = view_class_name(best)
        scores["orientation_confidence"] = round(confidence, 4)
        if confidence < spec.correct_min:
            reasons.append(f"the film may be {found} ({confidence:.2f}), too uncertain to correct")
            return DomainVerdict("out", reasons, scores), pixels
        turns, inverted = best % 4, best >= 4
        corrected = undo(pixels, turns, inverted)
        # A wrong correction would classify a film the wrong way up: the corrected film must itself look
        # upright, with the same confidence, or the image is refused.
        after, _ = self.view(view_input(corrected, self.preprocess, self.view.input_size))
        upright_after = float(after[0] + after[8])
        scores["upright_after_correction"] = round(upright_after, 4)
        if upright_after < spec.correct_min:
            reasons.append(
                f"the film may be {found} ({confidence:.2f}), but turned back it does not look upright "
                f"({upright_after:.2f}): not corrected"
            )
            return DomainVerdict("out", reasons, scores), pixels
        reasons.insert(0, f"the film was {found} ({confidence:.2f}); corrected before classifying")
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
            return replace(verdict, scores=scores)
        return replace(verdict, verdict="out", reasons=[*verdict.reasons, problem], scores=scores)


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
