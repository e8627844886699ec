"""The typed options of `cxr train`, `cxr crossval` and `cxr train-view`: validation, the parser's defaults,
and a tiny real run through the programmatic API that matches the same run through the CLI."""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from cxr.cli import build_parser
from cxr.cli import main as cxr
from export.options import CrossvalOptions, TrainOptions, ViewOptions


def _parsed(command: str, *flags: str) -> Any:
    return build_parser([command]).parse_args([command, *flags])


def test_parser_defaults_are_the_options_defaults() -> None:
    required = ("--manifest", "m.csv", "--out", "run")
    assert TrainOptions.from_args(_parsed("train", *required)) == TrainOptions(
        manifest=Path("m.csv"), out=Path("run")
    )
    crossval = CrossvalOptions.from_args(_parsed("crossval", *required))
    assert crossval == CrossvalOptions(manifest=Path("m.csv"), out=Path("run"))
    assert crossval.folds == 3
    view = ViewOptions.from_args(_parsed("train-view", *required, "--model", "models/x/1"))
    assert view == ViewOptions(manifest=Path("m.csv"), model=Path("models/x/1"), out=Path("run"))


def test_from_args_reads_every_flag() -> None:
    args = _parsed("train", "--manifest", "m.csv", "--out", "run", "--epochs", "3", "--arch", "basic",
                   "--segmenter", "none", "--model-seed", "7", "--folds", "4", "--fold", "2",
                   "--weight-average", "0.5", "--limit", "9")  # fmt: skip
    options = TrainOptions.from_args(args)
    assert (options.epochs, options.arch, options.segmenter, options.model_seed) == (3, "basic", "none", 7)
    assert (options.folds, options.fold, options.weight_average, options.limit) == (4, 2, 0.5, 9)
    assert options.segmenter_path is None and options.training_seed == 7
    # train.json's `arguments`: the namespace's values, in flag order, as the old code recorded them
    recorded = {k: v for k, v in vars(args).items() if k not in ("command", "verbose")}
    assert options.arguments() == recorded
    assert list(options.arguments()) == list(recorded)
    assert json.loads(json.dumps(options.arguments())) == recorded


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epochs": 0}, "--epochs"),
        ({"arch": "resnet9000"}, "--arch"),
        ({"batch_size": 0}, "--batch-size"),
        ({"learning_rate": 0.0}, "--learning-rate"),
        ({"patience": 0}, "--patience"),
        ({"seed": -1}, "--seed"),
        ({"task": "four-class"}, "--task"),
        ({"weights": "internet"}, "--weights"),
        ({"source_balance": 1.5}, "--source-balance"),
        ({"weight_average": 1.0}, "--weight-average"),
        ({"adversary": -0.1}, "--adversary"),
        ({"annotations": 2.0}, "--annotations"),
        ({"fold": 1}, "--fold needs --folds"),
        ({"folds": 1}, "--folds"),
        ({"folds": 3, "fold": 3}, r"--fold must be in \[0, --folds\)"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "--val-fraction"),
        ({"min_sensitivity": 1.1}, "--min-sensitivity"),
        ({"limit": 0}, "--limit"),
    ],
)
def test_bad_train_options_are_refused_on_construction(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainOptions(manifest=Path("m.csv"), out=Path("run"), **changes)


def test_crossval_needs_two_folds_and_gives_each_fold_the_full_budget() -> None:
    with pytest.raises(ValueError, match="--folds must be at least 2"):
        CrossvalOptions(manifest=Path("m.csv"), out=Path("cv"), folds=1)
    options = CrossvalOptions(manifest=Path("m.csv"), out=Path("cv"), epochs=5, patience=2, seed=3)
    fold = options.fold_options(2)
    assert type(fold) is TrainOptions
    assert (fold.fold, fold.folds, fold.out, fold.patience) == (2, 3, Path("cv/fold-2"), 5)
    unchanged = [f.name for f in fields(TrainOptions) if f.name not in ("fold", "out", "patience")]
    assert all(getattr(fold, name) == getattr(options, name) for name in unchanged)


@pytest.mark.parametrize(
    ("changes", "message"),
    [({"epochs": 0}, "--epochs"), ({"negatives": 0}, "--negatives"), ({"input_size": 8}, "--input-size")],
)
def test_bad_view_options_are_refused_on_construction(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ViewOptions(manifest=Path("m.csv"), model=Path("m"), out=Path("o"), **changes)


def test_options_are_frozen() -> None:
    options = TrainOptions(manifest=Path("m.csv"), out=Path("run"))
    with pytest.raises(AttributeError):
        options.epochs = 2  # type: ignore[misc]


def test_cli_refuses_bad_options_with_status_2_before_creating_the_run_folder(tmp_path: Path) -> None:
    manifest = str(tmp_path / "absent.csv")
    assert cxr(["train", "--manifest", manifest, "--out", str(tmp_path / "a"), "--epochs", "0"]) == 2
    assert cxr(["crossval", "--manifest", manifest, "--out", str(tmp_path / "b"), "--folds", "1"]) == 2
    view = ["train-view", "--manifest", manifest, "--model", str(tmp_path), "--out", str(tmp_path / "c")]
    assert cxr([*view, "--negatives", "0"]) == 2
    assert not any((tmp_path / name).exists() for name in "abc")


def _without_timings(summary: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in summary.items() if key != "train_seconds"}


def test_typed_train_matches_the_same_run_through_the_cli(synthetic_manifest: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorflow", reason="the [train] extra is not installed")
    from export.train import train

    options = TrainOptions(manifest=synthetic_manifest, arch="compact", epochs=1, input_size=64,
                           segmenter="none", out=tmp_path / "api", batch_size=16, model_seed=5)  # fmt: skip
    summary = train(options)
    api = tmp_path / "api"
    assert summary["command"] is None and summary["epochs_run"] == 1
    assert summary["arguments"] == options.arguments()
    assert json.loads((api / "train.json").read_text()) == summary
    written = {"model.keras", "split.csv", "history.json", "curves.png", "train.json", "val_predictions.csv"}
    assert {path.name for path in api.iterdir()} == written  # no lungseg.onnx: cropping is off

    cli = tmp_path / "cli"
    assert cxr(["train", "--manifest", str(synthetic_manifest), "--arch", "compact", "--epochs", "1",
                "--input-size", "64", "--segmenter", "none", "--out", str(cli), "--batch-size", "16",
                "--model-seed", "5"]) == 0  # fmt: skip
    from_cli = json.loads((cli / "train.json").read_text())
    assert _without_timings(from_cli) == _without_timings(summary) | {
        "arguments": options.arguments() | {"out": str(cli)}
    }
    # Same seeds, same numbers: the validation scores agree to the digit.
    assert (cli / "val_predictions.csv").read_text() == (api / "val_predictions.csv").read_text()
    assert (cli / "split.csv").read_text() == (api / "split.csv").read_text()
