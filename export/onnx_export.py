"""`cxr export`: a training run folder -> a model repository entry `<repo>/<name>/<version>/`.

Writes `model.onnx` (input `image` (N, S, S, 1); outputs `probabilities` (N, K) and, for designs with a
GAP head, `cam` (N, h, w): the positive class's activation map in logit units, computed in the same forward
pass), the lung segmenter, `split.csv`, and `card.json` with every file's sha256. Parity with Keras is
verified on at least 64 real images (max abs difference of probabilities <= 1e-4) or the export fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from export.dataset import read_manifest, read_split
from export.tf_onnx import OPSET, ParityError, export_function
from export.triton import write_config
from service.imaging.preprocess import PreprocessSpec
from service.inference.model import CARD_FILE, MODEL_FILE, SEGMENTER_FILE, Segmenter, sha256_file

logger = logging.getLogger(__name__)

MIN_PARITY_IMAGES = 64
INTENDED_USE = (
    "Research use only. Not for diagnosis, triage or any clinical decision. Trained on public data whose "
    "COVID-19 and non-COVID images come from different sources; see the model card for its limits."
)


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True, help="run folder written by `cxr train`")
    parser.add_argument("--manifest", required=True, help="the training manifest (parity images, sha256)")
    parser.add_argument("--repository", default="models", help="model repository root")
    parser.add_argument("--name", default="cxr-compact")
    parser.add_argument("--version", default="1")
    parser.add_argument("--tolerance", type=float, default=1e-4)


def build_serving_function(models: list[Any], labels: list[str], feature_layer: str | None) -> Any:
    """tf.function: image -> {probabilities, cam?}. The CAM is exact for GAP + dense heads:
    mean over (h, w) of `cam` plus the dense bias equals the positive logit. With several models (an
    ensemble from `cxr ensemble`) logits and CAMs are averaged, which keeps that identity."""
    import keras
    import tensorflow as tf

    size = models[0].input_shape[1]
    positive = labels.index("covid")
    features_models = [
        keras.Model(model.input, model.get_layer(feature_layer).output) if feature_layer else None
        for model in models
    ]

    @tf.function(input_signature=[tf.TensorSpec((None, size, size, 1), tf.float32, name="image")])
    def serve(image: Any) -> dict[str, Any]:
        logits = tf.add_n([model(image, training=False) for model in models]) / len(models)
        if logits.shape[-1] == 1:
            covid = tf.sigmoid(logits[:, 0])
            probabilities = tf.stack([1.0 - covid, covid], axis=1)
        else:
            probabilities = tf.nn.softmax(logits, axis=-1)
        outputs = {"probabilities": probabilities}
        cams = []
        for model, features_model in zip(models, features_models, strict=True):
            if features_model is None:
                continue
            features = features_model(image, training=False)
            kernel = model.get_layer("head").kernel[:, 0 if logits.shape[-1] == 1 else positive]
            cam = tf.tensordot(features, kernel, axes=[[3], [0]])
            # tensordot drops the static spatial dims; restore them so the graph (and Triton's config)
            # declares (N, h, w) instead of (N, ?, ?).
            height, width = features_model.output_shape[1:3]
            cams.append(tf.reshape(cam, [-1, height, width]))
        if cams:
            outputs["cam"] = tf.add_n(cams) / len(cams)
        return outputs

    return serve


@dataclass(frozen=True)
class TrainedRun:
    """A run folder as `cxr export` reads it: train.json, its labels and preprocessing, the Keras model(s)."""

    folder: Path
    summary: dict[str, Any]
    labels: list[str]
    spec: PreprocessSpec
    models: list[Any]
    feature_layer: str | None


def export_run(
    run: Path, manifest: Path, repository: Path, name: str, version: str, tolerance: float = 1e-4
) -> Path:
    """Export the run folder `run` to `<repository>/<name>/<version>/` (model.onnx, segmenter, split.csv,
    curves, card.json) and Triton's config.pbtxt; raises ParityError when ONNX and Keras disagree by more
    than `tolerance` or there are fewer than MIN_PARITY_IMAGES images. Returns the version folder."""
    trained = load_run(run)
    samples = parity_samples(trained, manifest)
    serve = build_serving_function(trained.models, trained.labels, trained.feature_layer)
    target = repository / name / version
    target.mkdir(parents=True, exist_ok=True)
    metadata = _metadata(trained, manifest, name, version)
    if len(samples) < MIN_PARITY_IMAGES:
        raise ParityError(f"only {len(samples)} parity images; need {MIN_PARITY_IMAGES}")

    def reference(batch: np.ndarray) -> np.ndarray:
        return serve(batch)["probabilities"].numpy()  # type: ignore[no-any-return]

    difference = export_function(
        serve,
        target / MODEL_FILE,
        reference=reference,
        samples=samples,
        tolerance=tolerance,
        metadata=metadata,
        output="probabilities",
    )
    files = _copy_files(trained, target)
    parity = {"parity_images": len(samples), "parity_max_abs_diff": difference, "tolerance": tolerance}
    card = _card(trained, metadata, files, parity)
    _keep_from_previous_card(card, target / CARD_FILE)
    (target / CARD_FILE).write_text(json.dumps(card, indent=2) + "\n")
    # Triton's layout: config.pbtxt beside the versions, read from the graph (names, dims, types).
    write_config(target.parent, name)
    logger.info("wrote %s (parity %.2e on %d images)", target, difference, len(samples))
    return target


def load_run(run: Path) -> TrainedRun:
    """The run's train.json and Keras model(s): one for `cxr train`, the members for `cxr ensemble`."""
    import keras

    from export.architectures import REGISTRY

    summary = json.loads((run / "train.json").read_text())
    member_files = [member["path"] for member in summary.get("members", [])] or ["model.keras"]
    models = [keras.models.load_model(run / file, compile=False) for file in member_files]
    arch = REGISTRY[summary["architecture"]["name"]]
    feature_layer: str | None = summary["architecture"].get("feature_layer")
    if arch.has_cam and feature_layer is None:  # run folders written before feature_layer was recorded
        feature_layer = "features_relu" if arch.name.startswith("compact") else "features"
    spec = PreprocessSpec.from_dict(summary["preprocessing"])
    return TrainedRun(run, summary, summary["labels"], spec, models, feature_layer)


def parity_samples(trained: TrainedRun, manifest: Path) -> np.ndarray:
    """Up to 2 x MIN_PARITY_IMAGES model inputs from real images the model did not train on (val, then
    test; the manifest's first rows if those are too few), through the shared preprocessing."""
    from export.train import load_examples, training_tensor

    run, spec = trained.folder, trained.spec
    split = read_split(run / "split.csv")
    rows = [r for r in read_manifest(manifest) if split.get(r.file) in ("val", "test")][
        : MIN_PARITY_IMAGES * 2
    ]
    if len(rows) < MIN_PARITY_IMAGES:
        rows = read_manifest(manifest)[: MIN_PARITY_IMAGES * 2]
    segment = Segmenter(run / SEGMENTER_FILE, spec) if trained.summary.get("segmenter") else None
    examples = load_examples(rows, trained.labels, spec, segment)
    return np.stack([training_tensor(e, spec) for e in examples])


def _metadata(trained: TrainedRun, manifest: Path, name: str, version: str) -> dict[str, str]:
    """model.onnx's metadata_props: identity, labels, threshold, input, preprocessing, provenance, use."""
    from export.dataset import manifest_sha256

    spec, summary = trained.spec, trained.summary
    return {
        "name": name,
        "version": version,
        "labels": json.dumps(trained.labels),
        "positive_label": "covid",
        "threshold": repr(summary["threshold"]),
        "input": json.dumps(
            {
                "name": "image",
                "shape": [-1, spec.input_size, spec.input_size, 1],
                "datatype": "FP32",
                "range": [0, 1],
            }
        ),
        "preprocessing": json.dumps(spec.to_dict()),
        "training_manifest_sha256": manifest_sha256(manifest),
        "headline_metrics": json.dumps(
            {
                "val_auroc": summary["best"]["val_auroc"],
                "val_within_source_auroc": summary["best"]["val_within_source_auroc"],
            }
        ),
        "intended_use": INTENDED_USE,
    }


def _copy_files(trained: TrainedRun, target: Path) -> dict[str, str]:
    """Copy the segmenter, split.csv and curves into `target`; returns the card's files (name -> sha256)."""
    run = trained.folder
    files = {MODEL_FILE: sha256_file(target / MODEL_FILE)}
    if trained.summary.get("segmenter"):
        shutil.copyfile(run / SEGMENTER_FILE, target / SEGMENTER_FILE)
        files[SEGMENTER_FILE] = sha256_file(target / SEGMENTER_FILE)
    shutil.copyfile(run / "split.csv", target / "split.csv")
    for extra in sorted(run.glob("curves*.png")):
        shutil.copyfile(extra, target / extra.name)
    return files


def _card(
    trained: TrainedRun, metadata: dict[str, str], files: dict[str, str], parity: dict[str, Any]
) -> dict[str, Any]:
    """card.json: what the files are, how the model was trained, and the export's parity check."""
    summary = trained.summary
    return {
        "name": metadata["name"],
        "version": metadata["version"],
        "labels": trained.labels,
        "positive_label": "covid",
        "threshold": summary["threshold"],
        "threshold_rule": summary["threshold_rule"],
        "files": files,
        "segmenter": SEGMENTER_FILE if summary.get("segmenter") else None,
        "preprocessing": trained.spec.to_dict(),
        "input": json.loads(metadata["input"]),
        "outputs": ["probabilities", *(["cam"] if trained.feature_layer else [])],
        "opset": OPSET,
        "intended_use": INTENDED_USE,
        "architecture": summary["architecture"],
        "training": {
            "command": summary.get("command"),
            "arguments": summary["arguments"],
            "manifest_sha256": metadata["training_manifest_sha256"],
            "split_counts": summary["split_counts"],
            "best_epoch": summary["best"],
            "epochs_run": summary["epochs_run"],
            "train_seconds": summary["train_seconds"],
            "lung_crop": summary["lung_crop"],
            **({"members": summary["members"]} if "members" in summary else {}),
        },
        "export": parity,
        "segmenter_training": _segmenter_report(summary),
    }


def _keep_from_previous_card(card: dict[str, Any], previous: Path) -> None:
    """Carry over the evaluation of an earlier export of the same files, and any notes, from `previous`."""
    if not previous.is_file():
        return
    old = json.loads(previous.read_text())
    if old.get("files") == card["files"] and "evaluation" in old:
        card["evaluation"] = old["evaluation"]
    if "notes" in old:
        card["notes"] = old["notes"]


def _segmenter_report(summary: dict[str, Any]) -> dict[str, Any] | None:
    """The lung segmenter's training report (written by `cxr train-lungseg` beside lungseg.onnx)."""
    segmenter = summary["arguments"].get("segmenter")
    if not segmenter or segmenter == "none":
        return None
    report = Path(segmenter).with_name("lungseg_report.json")
    if not report.is_file():
        return None
    values: dict[str, Any] = json.loads(report.read_text())
    values.pop("history", None)
    return values


def main(args: argparse.Namespace) -> int:
    try:
        export_run(
            Path(args.run),
            Path(args.manifest),
            Path(args.repository),
            args.name,
            args.version,
            args.tolerance,
        )
    except ParityError as error:
        logger.error("export failed: %s", error)
        return 1
    except (FileNotFoundError, ValueError, KeyError) as error:
        logger.error("export failed: %s", error)
        return 2
    return 0
