"""Typed, validated options of `cxr train`, `cxr crossval` and `cxr train-view`.

The CLI parses flags into an `argparse.Namespace` and turns it into one of these with `from_args`; a test
builds one directly (`train(TrainOptions(manifest=..., out=tmp_path, epochs=1))`) with no parser. Fields
carry the flags' names and defaults (tests/export/test_train_options.py pins the two together); a bad value
raises ValueError on construction, before a run folder is created or an image decoded.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Self

TASKS = ("binary", "three-class")
WEIGHTS = ("imagenet",)
INVARIANCE_UNITS = ("logit", "spread")
"""What the counterfactual penalty's logit gap is measured in (export.invariance)."""
PAIR_CROPS = ("shared", "relocated")
"""Where the painted half of a counterfactual pair is cropped (export.train.augment)."""


def command_line(name: str) -> str | None:
    """The shell command of this process when it is `cxr NAME ...` (recorded in the run's JSON), else None."""
    if sys.argv[1:2] != [name]:
        return None
    return f"cxr {name} " + " ".join(shlex.quote(argument) for argument in sys.argv[2:])


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _from_namespace(cls: type[Any], args: argparse.Namespace, paths: tuple[str, ...]) -> Any:
    """`cls` from the namespace's attributes of the same names; `paths` become Path."""
    values = {field.name: getattr(args, field.name) for field in fields(cls)}
    return cls(**{name: Path(value) if name in paths else value for name, value in values.items()})


@dataclass(frozen=True, kw_only=True)
class TrainOptions:
    """Settings of one `cxr train` run; fields in the order of its flags (train.json records them so)."""

    manifest: Path
    arch: str = "compact"
    epochs: int = 40
    out: Path
    batch_size: int = 32
    learning_rate: float = 2e-3
    patience: int = 10
    seed: int = 1337
    """Seed of the split, and of initialisation and augmentation unless `model_seed` is set."""
    model_seed: int | None = None
    task: str = "binary"
    segmenter: str | None = None
    """lungseg.onnx for lung cropping; None or "none" turns cropping off (the spelling is recorded as given)."""
    input_size: int | None = None
    weights: str | None = None
    source_balance: float = 0.35
    weight_average: float = 0.0
    adversary: float = 0.0
    annotations: float = 0.0
    icu: float = 0.5
    """Probability of rendering a training image as a ward film (export.icu), for every label alike."""
    invariance: float = 1.0
    """Weight of the counterfactual penalty (export.invariance); 0 turns the painted pairs off."""
    invariance_units: str = "logit"
    """What the penalty's gap is measured in (export.invariance): "logit" or "spread"."""
    pair_crop: str = "shared"
    """Where the painted half of a pair is cropped: "shared" (the clean film's box) or "relocated"."""
    pair_geometry: float = 0.0
    """Probability that the painted half of a pair is also tilted inside borders (export.icu)."""
    folds: int = 0
    fold: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    min_sensitivity: float = 0.90
    limit: int | None = None

    def __post_init__(self) -> None:
        from export.architectures import REGISTRY

        _check(
            self.arch in REGISTRY, f"--arch must be one of {', '.join(sorted(REGISTRY))}, not {self.arch!r}"
        )
        _check(self.epochs >= 1, "--epochs must be at least 1")
        _check(self.batch_size >= 1, "--batch-size must be at least 1")
        _check(self.learning_rate > 0, "--learning-rate must be positive")
        _check(self.patience >= 1, "--patience must be at least 1")
        _check(self.seed >= 0, "--seed must be non-negative")
        _check(self.model_seed is None or self.model_seed >= 0, "--model-seed must be non-negative")
        _check(self.task in TASKS, f"--task must be one of {', '.join(TASKS)}, not {self.task!r}")
        _check(self.input_size is None or self.input_size >= 1, "--input-size must be positive")
        _check(self.weights in (None, *WEIGHTS), f"--weights must be one of {', '.join(WEIGHTS)}")
        _check(0 <= self.source_balance <= 1, "--source-balance must be in [0, 1]")
        # 1 would freeze the average at the first epoch's weights.
        _check(0 <= self.weight_average < 1, "--weight-average must be in [0, 1)")
        _check(self.adversary >= 0, "--adversary must be non-negative")
        _check(0 <= self.annotations <= 1, "--annotations must be in [0, 1]")
        _check(0 <= self.icu <= 1, "--icu must be in [0, 1]")
        _check(self.invariance >= 0, "--invariance must be non-negative")
        _check(self.invariance_units in INVARIANCE_UNITS, "--invariance-units must be logit or spread")
        _check(self.pair_crop in PAIR_CROPS, "--pair-crop must be shared or relocated")
        _check(0 <= self.pair_geometry <= 1, "--pair-geometry must be in [0, 1]")
        _check(
            not (self.invariance and self.adversary),
            "--adversary needs --invariance 0: the counterfactual pairs and the origin adversary are not combined",
        )
        _check(not self.fold or bool(self.folds), "--fold needs --folds")
        _check(self.folds == 0 or self.folds >= 2, "--folds must be 0 (off) or at least 2")
        _check(not self.folds or 0 <= self.fold < self.folds, "--fold must be in [0, --folds)")
        _check(
            0 <= self.val_fraction < 1
            and 0 <= self.test_fraction < 1
            and self.val_fraction + self.test_fraction < 1,
            "--val-fraction and --test-fraction must be in [0, 1) and sum to less than 1",
        )
        _check(0 <= self.min_sensitivity <= 1, "--min-sensitivity must be in [0, 1]")
        _check(self.limit is None or self.limit >= 1, "--limit must be at least 1")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Self:
        """The options of a parsed `cxr train` (or `cxr crossval`) command line."""
        options: Self = _from_namespace(cls, args, ("manifest", "out"))
        return options

    @property
    def segmenter_path(self) -> Path | None:
        """The segmenter that crops to the lungs; None when cropping is off."""
        return None if self.segmenter in (None, "none") else Path(str(self.segmenter))

    @property
    def training_seed(self) -> int:
        """Seed of initialisation and augmentation."""
        return self.seed if self.model_seed is None else self.model_seed

    def arguments(self) -> dict[str, Any]:
        """The options as JSON values, in flag order: train.json's `arguments`, read by export and ensemble."""
        return {
            field.name: str(value) if isinstance(value, Path) else value
            for field in fields(self)
            for value in [getattr(self, field.name)]
        }


@dataclass(frozen=True, kw_only=True)
class CrossvalOptions(TrainOptions):
    """Settings of `cxr crossval`: one training recipe (the `cxr train` flags) over `folds` folds."""

    folds: int = 3

    def __post_init__(self) -> None:
        _check(self.folds >= 2, "--folds must be at least 2")
        super().__post_init__()

    def fold_options(self, fold: int) -> TrainOptions:
        """The recipe for one fold: held out as val, trained into `out/fold-K` for the full epoch budget."""
        recipe = {field.name: getattr(self, field.name) for field in fields(TrainOptions)}
        # A fixed budget: with early stopping the last epoch would be chosen on the held-out fold itself.
        recipe |= {"fold": fold, "out": self.out / f"fold-{fold}", "patience": self.epochs}
        return TrainOptions(**recipe)


@dataclass(frozen=True, kw_only=True)
class ViewOptions:
    """Settings of `cxr train-view` (the input-domain check's view model)."""

    manifest: Path
    model: Path
    """Model version folder: its split.csv decides which films train and validate, its segmenter the lungs."""
    out: Path
    epochs: int = 14
    negatives: int = 300
    """Rendered negatives per fit kind."""
    input_size: int = 64
    seed: int = 1337
    install: bool = False
    """Copy view.onnx into `model` and record it in its card."""

    def __post_init__(self) -> None:
        _check(self.epochs >= 1, "--epochs must be at least 1")
        _check(self.negatives >= 1, "--negatives must be at least 1")
        # Four 2x poolings: a smaller input pools to nothing.
        _check(self.input_size >= 16, "--input-size must be at least 16")
        _check(self.seed >= 0, "--seed must be non-negative")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Self:
        """The options of a parsed `cxr train-view` command line."""
        options: Self = _from_namespace(cls, args, ("manifest", "model", "out"))
        return options
