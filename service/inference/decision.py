"""The decision rule: model output -> the label an answer carries, and the notice every answer carries.

One home for both, used by the HTTP API (/v1/classify), `cxr predict` and `cxr evaluate`, so a file gets
the same label whichever way it is classified. The threshold is the model card's, chosen on the
validation split (see the card); nothing here is tuned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from service.inference.model import ModelCard

NOTICE = (
    "Research use only. Not a medical device: not for diagnosis, triage or any clinical decision. "
    "Models of this kind are known to fail on images from hospitals they were not trained on."
)
"""The research-use notice: in every response body, the OpenAPI description, `cxr predict` and the
evaluation report."""


def label_for_score(score: float, card: ModelCard) -> str:
    """A binary model's label from p(positive): the positive label at or above the card's threshold,
    else the other label."""
    if len(card.labels) != 2:
        raise ValueError(
            f"a single score decides only a binary model; this one has {len(card.labels)} labels"
        )
    if score >= card.threshold:
        return card.positive_label
    return next(label for label in card.labels if label != card.positive_label)


def label_for(probabilities: np.ndarray, card: ModelCard) -> str:
    """Binary: the positive label if its probability reaches the card's threshold; otherwise argmax."""
    if len(card.labels) == 2:
        return label_for_score(float(probabilities[card.labels.index(card.positive_label)]), card)
    return card.labels[int(np.argmax(probabilities))]
