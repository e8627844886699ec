"""The card's thresholds for the input-domain check (`DomainSpec`) and what the check found against them
(`DomainVerdict`, with a `FailedCheck` for every check that refused the image).

service.imaging.input_check does the checking; this module only holds its answer, so that a refusal can be
read the same way wherever it goes: the service's 422 and results, `cxr predict`, the web page and the
PACS "not analysed" Secondary Capture. Each refusal is said twice, built in one place (`Refusals`) so that
the two never differ: a sentence for people that names the score and the card's threshold, and a
`FailedCheck` (score, threshold, the card key it came from, the rule) for programs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Verdict = Literal["in", "out", "corrected"]


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
class FailedCheck:
    """One check that refused the image: what it measured (`check`), the score, the card's threshold it
    missed (`threshold_name` is its key under the card's `domain.thresholds`) and which side refuses.
    Equal to the threshold passes: every check refuses strictly above or below it."""

    check: str
    score: float
    threshold: float
    threshold_name: str
    refuses: Literal["above", "below"]

    @property
    def rule(self) -> str:
        return f"score {'>' if self.refuses == 'above' else '<'} threshold refuses"

    def to_dict(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "score": self.score,
            "threshold": self.threshold,
            "threshold_name": self.threshold_name,
            "rule": self.rule,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FailedCheck:
        """An entry of a `domain.failed` list as the service sends it (a client's side: pacs.client).
        Raises ValueError when a field is missing or of the wrong kind."""
        try:
            rule = str(raw["rule"])
            return cls(
                str(raw["check"]),
                float(raw["score"]),
                float(raw["threshold"]),
                str(raw["threshold_name"]),
                "above" if rule.startswith("score >") else "below",
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not a failed-check entry: {error!r}") from None

    def describe(self) -> str:
        """One line for a person: `not_radiograph 0.9999 > 0.5 (the card's max_not_radiograph)`."""
        score, threshold = _apart(self.score, self.threshold, 4, "g")
        sign = ">" if self.refuses == "above" else "<"
        return f"{self.check} {score} {sign} {threshold} (the card's {self.threshold_name})"


@dataclass(frozen=True)
class DomainVerdict:
    """What the check found; `to_dict()` is the `domain` field of every result. `failed` holds one entry
    per check that refused the image (empty unless the verdict is "out"); `reasons` says the same in words,
    plus the warnings and corrections that refuse nothing."""

    verdict: Verdict
    reasons: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    turns: int = 0  # quarter turns counter-clockwise applied to the pixels
    inverted: bool = False
    failed: list[FailedCheck] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "scores": dict(self.scores),
            "failed": [check.to_dict() for check in self.failed],
        }

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


def _apart(score: float, threshold: float, places: int, kind: str) -> tuple[str, str]:
    """Score and threshold as text in format `kind` ("f", "%" or "g") with `places` decimals (significant
    digits for "g"), or more where fewer would print a refused score equal to its threshold (0.5004
    against 0.5 reads "0.5004, refused above 0.5000", not "0.50, refused above 0.50")."""
    for extra in range(4):
        shown = f"{score:.{places + extra}{kind}}", f"{threshold:.{places + extra}{kind}}"
        if shown[0] != shown[1]:
            break
    return shown


class Refusals:
    """The reasons and FailedChecks of one verdict, kept in step: each refusal adds one of each, and its
    threshold is read from the card's spec by name, so the sentence, the entry and the card never differ.
    The card's names say the side: `max_*` refuses above, `min_*` and `correct_min` below."""

    def __init__(self, spec: DomainSpec) -> None:
        self.spec = spec
        self.reasons: list[str] = []
        self.failed: list[FailedCheck] = []

    def refuse(
        self,
        check: str,
        score: float,
        threshold_name: str,
        sentence: str,
        *,
        places: int = 2,
        percent: bool = False,
        **words: object,
    ) -> None:
        """Add a refusal: `sentence` with `{score}` and `{threshold}` filled in (`places` decimals, as
        percentages with `percent`), and any other `words`."""
        threshold = float(getattr(self.spec, threshold_name))
        shown, limit = _apart(score, threshold, places, "%" if percent else "f")
        self.reasons.append(sentence.format(score=shown, threshold=limit, **words))
        refuses: Literal["above", "below"] = "above" if threshold_name.startswith("max_") else "below"
        self.failed.append(FailedCheck(check, round(float(score), 6), threshold, threshold_name, refuses))
