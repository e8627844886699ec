"""A tiny real run of the whole model pipeline: train -> export (with parity) -> evaluate -> predict."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("tensorflow", reason="the [train] extra is not installed")

from cxr.cli import main as cxr
from export.dataset import read_manifest, read_split
from export.options import TrainOptions
from export.train import train
from service.inference.model import OnnxModel


@pytest.fixture(scope="module")
def exported(synthetic_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("pipeline")
    run = work / "run"
    train(TrainOptions(manifest=synthetic_manifest, arch="compact", epochs=2, input_size=64,
                       segmenter="none", out=run, batch_size=16, weight_average=0.5))  # fmt: skip
    assert (
        cxr(
            [
                "export",
                "--run",
                str(run),
                "--manifest",
                str(synthetic_manifest),
                "--repository",
                str(work / "repo"),
                "--name",
                "tiny",
                "--version",
                "3",
            ]
        )
        == 0
    )
    return work


def test_train_writes_an_auditable_patient_disjoint_split(exported: Path, synthetic_manifest: Path) -> None:
    run = exported / "run"
    split = read_split(run / "split.csv")
    rows = read_manifest(synthetic_manifest)
    assert set(split) == {r.file for r in rows}
    by_patient: dict[str, set[str]] = {}
    for row in rows:
        by_patient.setdefault(row.patient_id, set()).add(split[row.file])
    assert all(len(s) == 1 for s in by_patient.values())
    summary = json.loads((run / "train.json").read_text())
    assert 0.0 <= summary["threshold"] <= 1.0
    assert (run / "curves.png").stat().st_size > 1000
    assert (exported / "repo" / "tiny" / "config.pbtxt").is_file()
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]
    assert all("val_auroc_raw_weights" in h for h in history)


def test_weight_average_mixes_float_weights_and_copies_the_rest() -> None:
    from export.train import average_weights

    first = [np.zeros(3, np.float32), np.array([7], np.int64)]
    second = [np.full(3, 4.0, np.float32), np.array([9], np.int64)]
    averaged = average_weights(None, first, 0.75)
    assert averaged[0] is not first[0] and np.array_equal(averaged[0], first[0])
    averaged = average_weights(averaged, second, 0.75)
    assert np.allclose(averaged[0], 1.0) and averaged[0].dtype == np.float32
    assert averaged[1].tolist() == [9]


def test_exported_graph_has_named_io_dynamic_batch_and_metadata(exported: Path) -> None:
    path = exported / "repo" / "tiny" / "3" / "model.onnx"
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["image"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert not dims[0].HasField("dim_value")  # dynamic batch axis
    assert [d.dim_value for d in dims[1:]] == [64, 64, 1]
    assert [o.name for o in graph.output] == ["cam", "probabilities"] or [o.name for o in graph.output] == [
        "probabilities",
        "cam",
    ]
    metadata = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(metadata["labels"]) == ["non-covid", "covid"]
    assert "training_manifest_sha256" in metadata
    card = json.loads((path.parent / "card.json").read_text())
    assert card["export"]["parity_max_abs_diff"] <= 1e-4
    assert card["export"]["parity_images"] >= 64


def test_cam_is_exact_for_the_gap_head(exported: Path, synthetic_manifest: Path) -> None:
    model = OnnxModel(exported / "repo" / "tiny" / "3")
    rows = read_manifest(synthetic_manifest)[:8]
    from service.imaging.decode import decode_file

    batch = np.stack([model.prepare(decode_file(str(r.path)))[0] for r in rows])
    probabilities, cam = model.run(batch)
    assert cam is not None
    # mean(cam) + bias = logit; recover the bias from one image and check it holds for all.
    logits = np.log(probabilities[:, 1] / probabilities[:, 0])
    bias = logits - cam.mean(axis=(1, 2))
    assert np.allclose(bias, bias[0], atol=1e-3)


def test_evaluate_and_predict_on_the_exported_model(exported: Path, synthetic_manifest: Path) -> None:
    model_dir = exported / "repo" / "tiny" / "3"
    out = exported / "eval"
    status = cxr(
        [
            "evaluate",
            "--manifest",
            str(synthetic_manifest),
            "--model",
            str(model_dir),
            "--split",
            "test",
            "--out",
            str(out),
            "--update-card",
        ]
    )
    assert status == 0
    metrics = json.loads((out / "metrics.json").read_text())
    test_files = [f for f, s in read_split(model_dir / "split.csv").items() if s == "test"]
    assert metrics["overall"]["n"] == len(test_files)
    assert metrics["overall"]["auroc_ci95"] is not None
    assert metrics["overall"]["auroc_ci_resamples"] == "patients"
    gap = metrics["origin_gap"]  # defined exactly when both origins have non-covid images of one label
    assert (gap["value"] is None) == (gap["covid_origin_negatives"] == 0 or gap["other_negatives"] == 0)
    assert gap["value"] is None or 0.0 <= gap["value"] <= 1.0
    for name in ("roc.png", "confusion_matrix.png", "classification_report.txt", "cam_grid.png"):
        assert (out / name).stat().st_size > 0
    assert "evaluation" in json.loads((model_dir / "card.json").read_text())
    assert "RESEARCH USE ONLY" in (model_dir / "card.md").read_text()

    image = synthetic_manifest.parent / test_files[0]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cxr",
            "predict",
            str(image),
            "--model",
            str(model_dir),
            "--format",
            "jsonl",
            "--heatmap",
            str(exported / "heat"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(record["probabilities"]) == {"non-covid", "covid"}
    assert abs(sum(record["probabilities"].values()) - 1) < 1e-5
    assert record["label"] in ("covid", "non-covid")
    assert (exported / "heat" / f"{image.stem}_cam.png").is_file()


def _train_tiny(manifest: Path, out: Path, *extra: str) -> None:
    args = ["train", "--manifest", str(manifest), "--arch", "compact", "--epochs", "1", "--input-size", "64"]
    args += ["--segmenter", "none", "--out", str(out), "--batch-size", "16", *extra]
    assert cxr(args) == 0


def test_ensemble_of_runs_on_one_split_exports_with_parity_and_an_exact_cam(
    exported: Path, synthetic_manifest: Path
) -> None:
    member = exported / "member-b"
    _train_tiny(synthetic_manifest, member, "--model-seed", "7")
    ensemble = exported / "ensemble"
    assert cxr(["ensemble", "--run", str(exported / "run"), "--run", str(member), "--manifest",
                str(synthetic_manifest), "--out", str(ensemble)]) == 0  # fmt: skip
    summary = json.loads((ensemble / "train.json").read_text())
    assert [m["model_seed"] for m in summary["members"]] == [None, 7]
    assert read_split(ensemble / "split.csv") == read_split(exported / "run" / "split.csv")
    assert 0.0 <= summary["threshold"] <= 1.0
    repo = exported / "ensemble-repo"
    export = [
        "export",
        "--run",
        str(ensemble),
        "--manifest",
        str(synthetic_manifest),
        "--repository",
        str(repo),
    ]
    assert cxr([*export, "--name", "tiny-ensemble", "--version", "1"]) == 0
    card = json.loads((repo / "tiny-ensemble" / "1" / "card.json").read_text())
    assert card["export"]["parity_max_abs_diff"] <= 1e-4
    assert len(card["training"]["members"]) == 2

    # The ensemble's answer differs from each member's: it really combines both.
    model = OnnxModel(repo / "tiny-ensemble" / "1")
    single = OnnxModel(exported / "repo" / "tiny" / "3")
    from service.imaging.decode import decode_file

    rows = read_manifest(synthetic_manifest)[:8]
    batch = np.stack([model.prepare(decode_file(str(r.path)))[0] for r in rows])
    probabilities, cam = model.run(batch)
    assert cam is not None
    assert not np.allclose(probabilities, single.run(batch)[0], atol=1e-6)
    logits = np.log(probabilities[:, 1] / probabilities[:, 0])
    bias = logits - cam.mean(axis=(1, 2))  # mean of the members' biases, the same for every image
    assert np.allclose(bias, bias[0], atol=1e-3)


def test_ensemble_refuses_runs_on_different_splits(exported: Path, synthetic_manifest: Path) -> None:
    other = exported / "other-split"
    _train_tiny(synthetic_manifest, other, "--seed", "99")
    status = cxr(["ensemble", "--run", str(exported / "run"), "--run", str(other), "--manifest",
                  str(synthetic_manifest), "--out", str(exported / "bad-ensemble")])  # fmt: skip
    assert status == 2
    assert not (exported / "bad-ensemble" / "train.json").exists()


def test_quantize_records_the_int8_variant_in_both_cards(
    exported: Path, synthetic_manifest: Path, tmp_path: Path
) -> None:
    model_dir = tmp_path / "tiny" / "3"  # a copy: the other tests read the exported card as it was
    shutil.copytree(exported / "repo" / "tiny" / "3", model_dir)
    args = ["quantize", "--model", str(model_dir), "--manifest", str(synthetic_manifest)]
    assert cxr([*args, "--calibration-images", "8"]) == 0
    variant = json.loads((model_dir / "card.json").read_text())["variants"]["int8"]
    assert set(variant["val_auroc"]) == {"fp32", "int8"} and isinstance(variant["kept"], bool)
    # card.md is re-rendered from card.json, so the person reading it sees the same verdict
    assert "## Variant: int8" in (model_dir / "card.md").read_text()
    assert variant["reason"] in (model_dir / "card.md").read_text()
