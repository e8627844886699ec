"""Binary classification metrics reported the way a reader can check them: AUROC with a bootstrap CI,
operating-point metrics at a stated threshold, calibration, and the same broken down by source."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


def auroc(y_true: np.ndarray, scores: np.ndarray) -> float | None:
    """Area under the ROC curve (Mann-Whitney U with ties counted half); None with a single class."""
    y_true = np.asarray(y_true).astype(bool)
    positives, negatives = scores[y_true], scores[~y_true]
    if len(positives) == 0 or len(negatives) == 0:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores), dtype=np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(average, counts)
    u = ranks[y_true].sum() - len(positives) * (len(positives) + 1) / 2.0
    return float(u / (len(positives) * len(negatives)))


def bootstrap_auroc_ci(
    y_true: np.ndarray, scores: np.ndarray, *, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float] | None:
    """Percentile CI from resampling positives and negatives separately (keeps both classes present)."""
    y_true = np.asarray(y_true).astype(bool)
    positives, negatives = scores[y_true], scores[~y_true]
    if len(positives) < 2 or len(negatives) < 2:
        return None
    rng = np.random.default_rng(seed)
    values = np.empty(resamples)
    labels = np.r_[np.ones(len(positives), bool), np.zeros(len(negatives), bool)]
    for index in range(resamples):
        sample = np.r_[rng.choice(positives, len(positives)), rng.choice(negatives, len(negatives))]
        values[index] = auroc(labels, sample) or 0.0
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def mixed_origins(positive: np.ndarray, origins: np.ndarray) -> np.ndarray:
    """Mask of the images whose origin has both classes (ieee8023 here): within them the source shortcut
    cannot separate the classes."""
    positive, origins = np.asarray(positive).astype(bool), np.asarray(origins)
    mixed = [o for o in set(origins[positive]) if (~positive[origins == o]).any()]
    return np.isin(origins, mixed)


def origin_gap_pairs(
    positive: np.ndarray, origins: np.ndarray, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The origin gap's comparison: (negatives from COVID-bearing origins, mask of the negatives in a label
    cell that has both sides). Cells are the non-COVID labels (normal, pneumonia), so a score that rises
    with pneumonia, which ieee8023's negatives mostly are (74 of 85, against half of NIH's), is not
    mistaken for a trace of the origin."""
    positive, origins, labels = np.asarray(positive).astype(bool), np.asarray(origins), np.asarray(labels)
    inside = ~positive & np.isin(origins, list(set(origins[positive])))
    counted = np.zeros(len(positive), dtype=bool)
    for label in set(labels[~positive]):
        cell = ~positive & (labels == label)
        if inside[cell].any() and (~inside[cell]).any():
            counted |= cell
    return inside, counted


def stratified_auroc(inside: np.ndarray, cells: np.ndarray, scores: np.ndarray) -> float | None:
    """AUROC of `inside` against the rest within each cell, the cells weighted by their number of pairs
    (cells without both sides count nothing); None without any pair."""
    total = pairs = 0.0
    for cell_name in set(cells):
        cell = cells == cell_name
        value = auroc(inside[cell], scores[cell])
        if value is not None:
            weight = float(inside[cell].sum() * (~inside[cell]).sum())
            total, pairs = total + value * weight, pairs + weight
    return total / pairs if pairs else None


def origin_gap(
    positive: np.ndarray, origins: np.ndarray, labels: np.ndarray, scores: np.ndarray
) -> float | None:
    """The chance that a non-COVID image from a COVID-bearing origin scores above a non-COVID image of the
    same label from elsewhere (ties half): 0.5 when the score carries no trace of the origin among
    negatives, 1.0 for the pure source shortcut; None without such pairs."""
    inside, counted = origin_gap_pairs(positive, origins, labels)
    return stratified_auroc(inside[counted], np.asarray(labels)[counted], np.asarray(scores)[counted])


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float | None],
    strata: np.ndarray,
    groups: np.ndarray,
    *,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile CI of `statistic(indices)` with whole groups (patients: follow-up films of one patient
    are not independent) resampled with replacement within each stratum (e.g. class), so every stratum
    keeps its size in groups. None when the statistic is undefined on the data or a stratum has fewer
    than two groups."""
    if statistic(np.arange(len(strata))) is None:
        return None
    strata, groups = np.asarray(strata), np.asarray(groups)
    members = {
        stratum: [
            np.flatnonzero((strata == stratum) & (groups == group))
            for group in np.unique(groups[strata == stratum])
        ]
        for stratum in np.unique(strata)
    }
    if any(len(cells) < 2 for cells in members.values()):
        return None  # a stratum of one patient would be resampled as itself: no interval to speak of
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        chosen = [
            cells[index] for cells in members.values() for index in rng.integers(0, len(cells), len(cells))
        ]
        value = statistic(np.concatenate(chosen))
        if value is not None:
            values.append(value)
    if not values:
        return None
    tail = (1 - level) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def choose_threshold(y_true: np.ndarray, scores: np.ndarray, min_sensitivity: float = 0.90) -> float:
    """Highest specificity among thresholds whose sensitivity is >= min_sensitivity (ties: higher threshold)."""
    y_true = np.asarray(y_true).astype(bool)
    candidates = np.unique(scores)[::-1]
    best, best_spec = float(candidates[-1]), -1.0
    for threshold in candidates:
        predicted = scores >= threshold
        sensitivity = predicted[y_true].mean() if y_true.any() else 0.0
        if sensitivity < min_sensitivity:
            continue
        specificity = (~predicted[~y_true]).mean() if (~y_true).any() else 0.0
        if specificity > best_spec:
            best, best_spec = float(threshold), float(specificity)
    return best


def expected_calibration_error(y_true: np.ndarray, scores: np.ndarray, bins: int = 10) -> float:
    """ECE over equal-width probability bins (weighted mean |accuracy - confidence| of the positive class)."""
    y_true = np.asarray(y_true).astype(float)
    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(scores, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        members = index == b
        if members.any():
            total += members.mean() * abs(y_true[members].mean() - scores[members].mean())
    return float(total)


def _ratio(numerator: int, denominator: int) -> float | None:
    return float(numerator / denominator) if denominator else None


def operating_point(y_true: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    y_true = np.asarray(y_true).astype(bool)
    predicted = scores >= threshold
    tp = int(np.sum(predicted & y_true))
    fp = int(np.sum(predicted & ~y_true))
    tn = int(np.sum(~predicted & ~y_true))
    fn = int(np.sum(~predicted & y_true))
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    f1 = (
        2 * precision * recall / (precision + recall)
        if precision and recall
        else (0.0 if precision is not None and recall is not None else None)
    )
    return {
        "threshold": threshold,
        "accuracy": _ratio(tp + tn, len(y_true)),
        "sensitivity": recall,
        "specificity": _ratio(tn, tn + fp),
        "ppv": precision,
        "npv": _ratio(tn, tn + fn),
        "f1": f1,
        "confusion_matrix": {
            "labels": ["negative", "positive"],
            "matrix": [[tn, fp], [fn, tp]],
            "tn": tn,
            "fp": fp,
            "fn": fn,
            "tp": tp,
        },
    }


def summarize(
    y_true: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    *,
    seed: int = 0,
    patients: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Everything for one set: counts, AUROC with 95% CI, operating point, calibration. With `patients`,
    the CI resamples patients (their follow-up films are not independent); without, images."""
    y_true = np.asarray(y_true).astype(bool)
    value = auroc(y_true, scores)
    if value is None:
        ci = None
    elif patients is None:
        ci = bootstrap_auroc_ci(y_true, scores, seed=seed)
    else:
        ci = bootstrap_ci(
            lambda index: auroc(y_true[index], scores[index]), y_true, np.asarray(patients), seed=seed
        )
    return {
        "n": len(y_true),
        "positives": int(y_true.sum()),
        "negatives": int((~y_true).sum()),
        "auroc": value,
        "auroc_ci95": list(ci) if ci else None,
        "auroc_ci_resamples": "patients" if patients is not None else "images",
        **operating_point(y_true, scores, threshold),
        "ece": expected_calibration_error(y_true, scores),
    }


def by_group(
    y_true: np.ndarray,
    scores: np.ndarray,
    groups: Sequence[str],
    threshold: float,
    *,
    patients: Sequence[str] | None = None,
) -> dict[str, Any]:
    groups_array = np.asarray(groups)
    patient_array = np.asarray(patients) if patients is not None else None
    return {
        str(group): summarize(
            y_true[groups_array == group],
            scores[groups_array == group],
            threshold,
            patients=list(patient_array[groups_array == group]) if patient_array is not None else None,
        )
        for group in sorted(set(groups))
    }


def origin_gap_with_ci(
    positive: np.ndarray, origins: np.ndarray, labels: np.ndarray, scores: np.ndarray, patients: np.ndarray
) -> dict[str, Any]:
    """`origin_gap` with a 95% CI from resampling patients within each (origin side, label) cell."""
    inside, counted = origin_gap_pairs(positive, origins, labels)
    inside, cells, kept = inside[counted], np.asarray(labels)[counted], np.asarray(scores)[counted]

    def statistic(index: np.ndarray) -> float | None:
        return stratified_auroc(inside[index], cells[index], kept[index])

    interval = bootstrap_ci(statistic, np.char.add(inside.astype(str), cells), np.asarray(patients)[counted])
    return {
        "value": statistic(np.arange(len(inside))),
        "ci95": list(interval) if interval else None,
        "covid_origin_negatives": int(inside.sum()),
        "other_negatives": int((~inside).sum()),
    }
