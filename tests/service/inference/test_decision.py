"""service.inference.decision: the one label rule the API, `cxr predict` and `cxr evaluate` share."""

from __future__ import annotations

import numpy as np
import pytest

from service.imaging.preprocess import PreprocessSpec
from service.inference.decision import NOTICE, label_for, label_for_score
from service.inference.model import ModelCard


def _card(labels: list[str], positive: str, threshold: float) -> ModelCard:
    return ModelCard(
        name="m",
        version="1",
        labels=labels,
        positive_label=positive,
        threshold=threshold,
        files={},
        preprocessing=PreprocessSpec(),
        segmenter=None,
    )


def test_binary_label_is_positive_at_or_above_the_threshold() -> None:
    card = _card(["non-covid", "covid"], "covid", 0.3)
    assert label_for_score(0.3, card) == "covid"  # the threshold itself counts as positive
    assert label_for_score(0.2999, card) == "non-covid"
    assert label_for(np.array([0.65, 0.35]), card) == "covid"  # not argmax: the card's threshold decides
    assert label_for(np.array([0.75, 0.25]), card) == "non-covid"


def test_the_negative_label_comes_from_the_card_not_a_constant() -> None:
    card = _card(["covid", "other"], "covid", 0.5)
    assert label_for_score(0.1, card) == "other"
    assert label_for(np.array([0.1, 0.9]), card) == "other"


def test_multiclass_is_argmax_and_a_single_score_is_refused() -> None:
    card = _card(["normal", "pneumonia", "covid"], "covid", 0.5)
    assert label_for(np.array([0.2, 0.5, 0.3]), card) == "pneumonia"
    with pytest.raises(ValueError, match="binary"):
        label_for_score(0.9, card)


def test_notice_says_research_use_and_not_diagnosis() -> None:
    assert NOTICE.startswith("Research use only.")
    assert "not for diagnosis" in NOTICE
