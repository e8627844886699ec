"""Metrics agree with scikit-learn and with hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest

from export.metrics import (
    auroc,
    bootstrap_auroc_ci,
    bootstrap_ci,
    choose_threshold,
    expected_calibration_error,
    operating_point,
    origin_gap,
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


def test_patient_bootstrap_is_wider_than_the_image_bootstrap_for_follow_up_films() -> None:
    rng = np.random.default_rng(2)
    truth = np.repeat(rng.random(40) < 0.5, 6)  # 40 patients, 6 near-identical films each
    scores = np.repeat(rng.random(40), 6) + truth * 0.3 + rng.normal(0, 0.01, 240)
    patients = np.repeat(np.arange(40), 6)

    def statistic(index: np.ndarray) -> float | None:
        return auroc(truth[index], scores[index])

    by_patient = bootstrap_ci(statistic, truth, patients, resamples=400)
    by_image = bootstrap_ci(statistic, truth, np.arange(240), resamples=400)
    assert by_patient is not None and by_image is not None
    assert by_patient[0] < statistic(np.arange(240)) < by_patient[1]  # type: ignore[operator]
    assert by_patient[1] - by_patient[0] > 1.5 * (by_image[1] - by_image[0])
    assert bootstrap_ci(lambda index: None, truth, patients) is None
    one_positive = np.where(np.arange(240) < 6, True, False)  # a single COVID patient
    assert bootstrap_ci(statistic, one_positive, patients) is None


def test_origin_gap_is_a_label_stratified_auroc() -> None:
    covid = np.array([1, 0, 0, 0, 0, 0, 0], bool)
    origins = np.array(["a", "a", "a", "b", "b", "b", "b"])
    labels = np.array(["covid", "pneumonia", "normal", "pneumonia", "pneumonia", "normal", "normal"])
    # pneumonia cell: a's 0.7 beats one of b's two (0.5, 0.9); normal cell: a's 0.3 beats both (0.1, 0.2)
    scores = np.array([0.9, 0.7, 0.3, 0.5, 0.9, 0.1, 0.2])
    assert origin_gap(covid, origins, labels, scores) == pytest.approx((0.5 * 2 + 1.0 * 2) / 4)
    assert origin_gap(covid, np.array(["a"] * 7), labels, scores) is None


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
