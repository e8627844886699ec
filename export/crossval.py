"""`cxr crossval`: one training recipe over K patient-disjoint folds of train+val, scored out of fold.

Why: the validation split holds 13 non-COVID ieee8023 images, so its within-source AUROC moves by about
±0.07 from sampling alone, too much to choose between training recipes. Over K folds every train+val image
is scored once by a model that did not train on it (73 non-COVID ieee8023 images, 278 COVID). Confidence
intervals resample patients, not images (follow-up films of one patient are not independent). The test
split is never read: `fold_split` leaves it out of every fold.

Scores are pooled two ways: at the last epoch (every fold trains the full `--epochs`, early stopping off,
so nothing was chosen on the images being scored: the figure to compare recipes by) and at each fold's
selected epoch (chosen on those same images, so optimistic; shown beside it). Pooling assumes the folds'
models score on a comparable scale; the mean of the per-fold AUROCs, which does not, is reported too.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from export.metrics import auroc, bootstrap_ci, mixed_origins, origin_gap_with_ci
from export.options import CrossvalOptions, command_line

logger = logging.getLogger(__name__)
SCORES = ("score_last", "score_selected")


def add_flags(parser: argparse.ArgumentParser) -> None:
    from export.train import add_flags as train_flags

    train_flags(parser)
    parser.set_defaults(folds=3)


def _measure(
    statistic: Callable[[np.ndarray], float | None],
    strata: np.ndarray,
    groups: np.ndarray,
    counts: dict[str, int],
) -> dict[str, Any]:
    interval = bootstrap_ci(statistic, strata, groups)
    return {
        "auroc": statistic(np.arange(len(strata))),
        "ci95": list(interval) if interval else None,
        **counts,
    }


def measures(records: list[dict[str, str]], column: str) -> dict[str, Any]:
    """Overall AUROC, within-source AUROC (origins with both classes) and the origin gap (export.metrics:
    0.5 = no trace of the origin among negatives of the same label), each with a 95% CI from resampling
    patients within each class."""
    covid = np.array([record["label"] == "covid" for record in records])
    scores = np.array([float(record[column]) for record in records])
    origins = np.array([record["origin"] for record in records])
    labels = np.array([record["label"] for record in records])
    patients = np.array([record["patient"] for record in records])
    within = np.flatnonzero(mixed_origins(covid, origins))

    def overall(index: np.ndarray) -> float | None:
        return auroc(covid[index], scores[index])

    def within_source(index: np.ndarray) -> float | None:
        return auroc(covid[within[index]], scores[within[index]])

    gap = origin_gap_with_ci(covid, origins, labels, scores, patients)
    return {
        "overall": _measure(
            overall, covid, patients, {"covid": int(covid.sum()), "other": int((~covid).sum())}
        ),
        "within_source": _measure(
            within_source,
            covid[within],
            patients[within],
            {"covid": int(covid[within].sum()), "other": int((~covid[within]).sum())},
        ),
        "source_gap": {"auroc": gap.pop("value"), **gap},
    }


def pool(fold_dirs: list[Path]) -> dict[str, Any]:
    """Out-of-fold measures from the folds' `val_predictions.csv`, pooled and per fold."""
    folds = []
    for fold_dir in fold_dirs:
        with (fold_dir / "val_predictions.csv").open(newline="") as handle:
            folds.append(list(csv.DictReader(handle)))
    files = [record["file"] for fold in folds for record in fold]
    if len(files) != len(set(files)):
        raise ValueError("an image was held out by more than one fold: the folds do not partition train+val")
    result: dict[str, Any] = {"images": len(files)}
    for column in SCORES:
        per_fold = [measures(fold, column) for fold in folds]
        means = {}
        for name in ("overall", "within_source", "source_gap"):
            values = [m[name]["auroc"] for m in per_fold if m[name]["auroc"] is not None]
            means[name] = float(np.mean(values)) if values else None
        result[column] = {
            "pooled": measures([record for fold in folds for record in fold], column),
            "per_fold": per_fold,
            "mean_of_folds": means,
        }
    return result


def crossval(options: CrossvalOptions, *, command: str | None = None) -> dict[str, Any]:
    """Train the recipe once per fold into `options.out/fold-K`, pool the out-of-fold scores and write
    crossval.json (`command` is recorded in it); returns its content."""
    options.out.mkdir(parents=True, exist_ok=True)
    fold_dirs = fit(options)
    result = {"command": command, "folds": options.folds, **measure(fold_dirs)}
    write(options.out, result)
    return result


def fit(options: CrossvalOptions) -> list[Path]:
    """Train every fold for the full epoch budget; returns the fold run folders in fold order."""
    from export.train import train

    fold_dirs = []
    for fold in range(options.folds):
        logger.info("fold %d of %d", fold + 1, options.folds)
        fold_options = options.fold_options(fold)
        train(fold_options)
        fold_dirs.append(fold_options.out)
    return fold_dirs


def measure(fold_dirs: list[Path]) -> dict[str, Any]:
    """The pooled and per-fold out-of-fold measures, and the folds' total training time."""
    return {
        **pool(fold_dirs),
        "train_seconds": sum(
            json.loads((fold_dir / "train.json").read_text())["train_seconds"] for fold_dir in fold_dirs
        ),
    }


def write(out: Path, result: dict[str, Any]) -> None:
    """Write crossval.json and log the pooled measures."""
    (out / "crossval.json").write_text(json.dumps(result, indent=2) + "\n")
    for column in SCORES:
        pooled = result[column]["pooled"]
        logger.info(
            "%s: out-of-fold AUROC %s, within-source %s, source gap %s",
            column,
            _shown(pooled["overall"]),
            _shown(pooled["within_source"]),
            _shown(pooled["source_gap"]),
        )


def _shown(measure: dict[str, Any]) -> str:
    if measure["auroc"] is None:
        return "n/a"
    interval = measure["ci95"]
    return f"{measure['auroc']:.3f}" + (f" [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "")


def main(args: argparse.Namespace) -> int:
    """`cxr crossval`: exit status 0, or 2 for bad options, a bad manifest or a missing file."""
    from export.dataset import ManifestError

    try:
        crossval(CrossvalOptions.from_args(args), command=command_line("crossval"))
    except (ManifestError, FileNotFoundError, ValueError) as error:
        logger.error("%s", error)
        return 2
    return 0
