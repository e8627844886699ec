"""Metrics agree with scikit-learn and with hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from export.metrics import (
    auroc,
    bootstrap_auroc_ci,
    choose_threshold,
    expected_calibration_error,
    operating_point,
)


def test_auroc_matches_sklearn_with_ties() -> None:
    sklearn = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    truth = rng.random(300) < 0.3
    scores = np.round(rng.random(300) + truth * 0.4, 1)  # rounding creates ties
    assert auroc(truth, scores) == pytest.approx(sklearn.roc_auc_score(truth, scores))
    assert auroc(np.ones(3, bool), np.array([0.1, 0.2, 0.3])) is None


def test_bootstrap_ci_brackets_the_estimate() -> None:
    rng = np.random.default_rng(1)
    truth = rng.random(200) < 0.5
    scores = rng.random(200) + truth * 0.5
    low, high = bootstrap_auroc_ci(truth, scores, resamples=500)  # type: ignore[misc]
    assert low < auroc(truth, scores) < high  # type: ignore[operator]


def test_threshold_rule_keeps_sensitivity_and_maximises_specificity() -> None:
    truth = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0], bool)
    scores = np.array([0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5, 0.2, 0.58, 0.3, 0.1, 0.05])
    threshold = choose_threshold(truth, scores, 0.9)
    point = operating_point(truth, scores, threshold)
    assert point["sensitivity"] >= 0.9
    assert threshold == 0.5 and point["specificity"] == 0.75


def test_calibration_error_of_a_calibrated_predictor_is_small() -> None:
    rng = np.random.default_rng(2)
    scores = rng.random(20000)
    truth = rng.random(20000) < scores
    assert expected_calibration_error(truth, scores) < 0.02
    assert expected_calibration_error(truth, np.clip(scores + 0.3, 0, 1)) > 0.15
