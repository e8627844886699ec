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

Every check that refuses names itself twice: in its reason (a sentence with the score and the card's
threshold) and as a `FailedCheck` in `DomainVerdict.failed` (the score, the threshold, the card key it
comes from and the rule), so a client, a PACS or a person can see which threshold the image missed and by
how much without parsing the sentence.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

import cv2
import numpy as np

# DomainSpec and DomainVerdict lived here before domain_verdict.py; export/ still imports them from here.
from service.imaging.domain_verdict import UNCHECKED, FailedCheck, Refusals, Verdict
from service.imaging.domain_verdict import DomainSpec as DomainSpec
from service.imaging.domain_verdict import DomainVerdict as DomainVerdict
from service.imaging.preprocess import Geometry, LungFields, PreprocessSpec, finish, trim_borders

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
        out = Refusals(spec)
        height, width = pixels.shape
        shorter = min(height, width)
        scores: dict[str, float] = {"colour_fraction": round(colour_fraction, 4), "shorter_side": shorter}
        if shorter < spec.min_side:
            out.refuse(
                "shorter_side",
                shorter,
                "min_side",
                "the image is {width}x{height} px; a chest radiograph needs at least {threshold} px on its "
                "shorter side (this one has {score})",
                places=0,
                width=width,
                height=height,
            )
        if colour_fraction > spec.max_colour_fraction:
            out.refuse(
                "colour_fraction",
                colour_fraction,
                "max_colour_fraction",
                "a colour image ({score} of its pixels are coloured, refused above {threshold}); "
                "radiographs are grayscale",
                places=0,
                percent=True,
            )
        if self.view is None or out.failed:
            verdict: Verdict = "out" if out.failed else "in"
            return DomainVerdict(verdict, out.reasons, scores, failed=out.failed), pixels
        probabilities, distance = self.view(view_input(pixels, self.preprocess, self.view.input_size))
        # Way up and polarity, whichever way round; and way round, whichever way up.
        films = probabilities[:FILM_CLASSES]
        orientation = films[:8] + films[8:]
        mirrored_p = float(films[8:].sum())
        not_radiograph = float(probabilities[NOT_RADIOGRAPH])
        best = int(np.argmax(orientation))
        scores |= {
            "not_radiograph": round(not_radiograph, 4),
            "upright": round(float(orientation[0]), 4),
            "mirrored": round(mirrored_p, 4),
            "distance": round(distance, 2),
        }
        if not_radiograph > spec.max_not_radiograph:
            out.refuse(
                "not_radiograph",
                not_radiograph,
                "max_not_radiograph",
                "it does not look like a chest radiograph (view model p(not a radiograph) {score}, "
                "refused above {threshold})",
            )
        elif distance > spec.max_distance:
            out.refuse(
                "distance",
                distance,
                "max_distance",
                "it is unlike every training film (feature distance {score}, refused above {threshold})",
            )
        if out.failed:
            return DomainVerdict("out", out.reasons, scores, failed=out.failed), pixels
        warnings: list[str] = []
        if mirrored_p >= spec.correct_min:
            warnings.append(
                f"the film may be mirrored left-right ({mirrored_p:.2f}; or a dextrocardia): classified as it is, "
                "and the score may be off"
            )
        if best == 0:
            return DomainVerdict("in", warnings, scores), pixels
        confidence = float(orientation[best])
        found = view_class_name(best)
        scores["orientation_confidence"] = round(confidence, 4)
        if confidence < spec.correct_min:
            out.refuse(
                "orientation_confidence",
                confidence,
                "correct_min",
                "the film may be {found} (view model {score}), too uncertain to correct (correcting needs "
                "{threshold} or more)",
                found=found,
            )
            return DomainVerdict("out", [*warnings, *out.reasons], scores, failed=out.failed), pixels
        turns, inverted = best % 4, best >= 4
        corrected = undo(pixels, turns, inverted)
        # A wrong correction would classify a film the wrong way up: the corrected film must itself look
        # upright, with the same confidence, or the image is refused.
        after, _ = self.view(view_input(corrected, self.preprocess, self.view.input_size))
        upright_after = float(after[0] + after[8])
        scores["upright_after_correction"] = round(upright_after, 4)
        if upright_after < spec.correct_min:
            out.refuse(
                "upright_after_correction",
                upright_after,
                "correct_min",
                "the film may be {found} (view model {confidence:.2f}), but turned back it does not look "
                "upright (p(upright) {score}, needs {threshold} or more): not corrected",
                found=found,
                confidence=confidence,
            )
            return DomainVerdict("out", [*warnings, *out.reasons], scores, failed=out.failed), pixels
        reasons = [f"the film was {found} ({confidence:.2f}); corrected before classifying", *warnings]
        return DomainVerdict("corrected", reasons, scores, turns, inverted), corrected

    def lungs(self, verdict: DomainVerdict, geometry: Geometry) -> DomainVerdict:
        """Step 4 on the preprocessed geometry: two lung fields of plausible size, side by side."""
        fields = geometry.lungs
        if fields is None or verdict.verdict == "out":
            return verdict
        scores = verdict.scores | {
            "lung_areas": round(fields.areas[0] + fields.areas[1], 4),
            "lung_smaller_area": round(fields.areas[1], 4),
        }
        failure = lung_failure(fields, self.spec)
        if failure is None:
            return replace(verdict, scores=scores)
        problem, check = failure
        return replace(
            verdict,
            verdict="out",
            reasons=[*verdict.reasons, problem],
            scores=scores | {check.check: round(check.score, 4)},
            failed=[*verdict.failed, check],
        )


def lung_failure(fields: LungFields, spec: DomainSpec) -> tuple[str, FailedCheck] | None:
    """Why the segmenter's components are not lungs (the reason and the check that failed), or None if
    they may be. A single lung field is allowed: a whited-out hemithorax (effusion, collapse,
    pneumonectomy) is a real frontal film; two fields must lie side by side."""
    (left_x, left_y), (right_x, right_y) = fields.centres
    out = Refusals(spec)
    side_by_side = "the two lung fields the segmenter found are not side by side"
    if fields.areas[0] < spec.min_lung_area:
        out.refuse(
            "lung_largest_area",
            fields.areas[0],
            "min_lung_area",
            "the lung segmenter found no lung field (largest {score} of the image, refused below "
            "{threshold})",
            places=1,
            percent=True,
        )
    elif fields.areas[1] < spec.min_lung_area:
        return None
    elif abs(left_x - right_x) < spec.min_lung_centre_dx:
        out.refuse(
            "lung_centre_dx",
            abs(left_x - right_x),
            "min_lung_centre_dx",
            side_by_side + " (one above the other: their centres are {score} of the width apart, refused "
            "below {threshold})",
            places=0,
            percent=True,
        )
    elif abs(left_y - right_y) > spec.max_lung_centre_dy:
        out.refuse(
            "lung_centre_dy",
            abs(left_y - right_y),
            "max_lung_centre_dy",
            side_by_side + " (their centres are {score} of the height apart vertically, refused above "
            "{threshold})",
            places=0,
            percent=True,
        )
    return (out.reasons[0], out.failed[0]) if out.failed else None


def lung_problem(fields: LungFields, spec: DomainSpec) -> str | None:
    """The reason `lung_failure` gives, or None (for counting refusals, as `cxr train-view` does)."""
    failure = lung_failure(fields, spec)
    return None if failure is None else failure[0]
