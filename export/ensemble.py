"""`cxr ensemble`: several training runs on the same split -> one run folder whose model averages logits.

Members differ only in `--model-seed` (initialisation and augmentation); they must share the split, the
labels, the preprocessing and the lung segmenter, which is checked. Logits are averaged, not
probabilities, so the class activation map stays exact: the mean of the members' CAMs plus the mean of
their head biases is the ensemble's positive logit. The ensemble is validated on the validation split
(overall and within-source AUROC) and its threshold is chosen there by the members' rule; `cxr export
--run OUT` then exports it like any run. The test split is not read.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

from export.dataset import read_manifest, read_split
from export.metrics import auroc, choose_threshold
from service.imaging.preprocess import PreprocessSpec
from service.inference.model import SEGMENTER_FILE, Segmenter, sha256_file

logger = logging.getLogger(__name__)
MEMBERS_DIR = "members"


class EnsembleError(ValueError):
    """The runs cannot be combined (different split, labels, preprocessing or segmenter)."""


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", action="append", required=True, help="a `cxr train` run folder (repeat)")
    parser.add_argument("--manifest", required=True, help="the training manifest (validation images)")
    parser.add_argument("--out", required=True, help="run folder to create")


def _same(runs: list[Path], what: str, values: list[Any]) -> None:
    if any(value != values[0] for value in values[1:]):
        raise EnsembleError(f"the runs differ in {what}: {', '.join(map(str, runs))}")


def member_logits(models: list[Any], batch: np.ndarray) -> np.ndarray:
    """The ensemble's logits: the mean of the members' logits."""
    logits: np.ndarray = np.mean([model.predict(batch, batch_size=64, verbose=0) for model in models], axis=0)
    return logits


def combine(runs: list[Path], manifest: Path, out: Path) -> dict[str, Any]:
    import keras

    from export.train import load_examples, positive_scores, training_tensor, within_source_auroc

    if len(runs) < 2:
        raise EnsembleError("an ensemble needs at least two runs")
    summaries = [json.loads((run / "train.json").read_text()) for run in runs]
    _same(runs, "labels", [s["labels"] for s in summaries])
    _same(runs, "preprocessing", [s["preprocessing"] for s in summaries])
    _same(runs, "architecture", [s["architecture"]["name"] for s in summaries])
    _same(runs, "split (split.csv)", [read_split(run / "split.csv") for run in runs])
    _same(runs, "threshold rule", [s["threshold_rule"] for s in summaries])
    segmenters = [
        sha256_file(run / SEGMENTER_FILE) if s.get("segmenter") else None
        for run, s in zip(runs, summaries, strict=True)
    ]
    _same(runs, "lung segmenter", segmenters)

    first = summaries[0]
    labels: list[str] = first["labels"]
    spec = PreprocessSpec.from_dict(first["preprocessing"])
    split = read_split(runs[0] / "split.csv")
    val_rows = [r for r in read_manifest(manifest) if split.get(r.file) == "val"]
    if not val_rows:
        raise EnsembleError(f"no validation rows of {runs[0] / 'split.csv'} are in {manifest}")
    segment = Segmenter(runs[0] / SEGMENTER_FILE, spec) if first.get("segmenter") else None
    examples = load_examples(val_rows, labels, spec, segment)
    val_x = np.stack([training_tensor(e, spec) for e in examples])
    positive = max(e.target for e in examples)
    truth = np.array([e.target == positive for e in examples])

    out.mkdir(parents=True, exist_ok=True)
    (out / MEMBERS_DIR).mkdir(exist_ok=True)
    models, members = [], []
    for index, (run, summary) in enumerate(zip(runs, summaries, strict=True)):
        relative = f"{MEMBERS_DIR}/{index}.keras"
        shutil.copyfile(run / "model.keras", out / relative)
        model = keras.models.load_model(out / relative, compile=False)
        models.append(model)
        scores = positive_scores(model.predict(val_x, batch_size=64, verbose=0), labels)
        members.append(
            {
                "path": relative,
                "run": str(run),
                "command": summary.get("command"),
                "model_seed": summary["arguments"].get("model_seed"),
                "best": summary["best"],
                "val_auroc": auroc(truth, scores),
                "val_within_source_auroc": within_source_auroc(examples, scores),
                "train_seconds": summary["train_seconds"],
                "epochs_run": summary["epochs_run"],
            }
        )
        if (run / "curves.png").is_file():
            shutil.copyfile(run / "curves.png", out / f"curves-member-{index}.png")

    scores = positive_scores(member_logits(models, val_x), labels)
    val_auc = auroc(truth, scores) or 0.0
    within = within_source_auroc(examples, scores)
    minimum = float(first["arguments"].get("min_sensitivity", 0.9))
    threshold = choose_threshold(truth, scores, minimum)
    shutil.copyfile(runs[0] / "split.csv", out / "split.csv")
    if first.get("segmenter"):
        shutil.copyfile(runs[0] / SEGMENTER_FILE, out / SEGMENTER_FILE)
    architecture = dict(first["architecture"])
    architecture["parameters"] = sum(s["architecture"]["parameters"] for s in summaries)
    architecture["description"] = (
        f"mean of the logits of {len(runs)} {first['architecture']['description']} models (same split, "
        "different initialisation and augmentation seeds)"
    )
    command = (
        "cxr ensemble " + " ".join(shlex.quote(a) for a in sys.argv[2:])
        if sys.argv[1:2] == ["ensemble"]
        else None
    )
    summary = {
        "command": command,
        "arguments": first["arguments"],
        "architecture": architecture,
        "labels": labels,
        "positive_label": first["positive_label"],
        "preprocessing": first["preprocessing"],
        "segmenter": first.get("segmenter"),
        "members": members,
        "best": {
            "score": (val_auc + within) / 2 if within is not None else val_auc,
            "epoch": [s["best"]["epoch"] for s in summaries],
            "val_auroc": val_auc,
            "val_within_source_auroc": within,
        },
        "threshold": threshold,
        "threshold_rule": first["threshold_rule"],
        "split_counts": first["split_counts"],
        "lung_crop": first["lung_crop"],
        "train_seconds": round(sum(s["train_seconds"] for s in summaries), 1),
        "epochs_run": [s["epochs_run"] for s in summaries],
    }
    (out / "train.json").write_text(json.dumps(summary, indent=2))
    logger.info(
        "ensemble of %d: val AUROC %.4f, within-source %s (members: %s); threshold %.4f",
        len(runs),
        val_auc,
        f"{within:.4f}" if within is not None else "n/a",
        ", ".join(f"{m['val_auroc']:.4f}/{m['val_within_source_auroc']}" for m in members),
        threshold,
    )
    return summary


def main(args: argparse.Namespace) -> int:
    from export.dataset import ManifestError

    try:
        combine([Path(run) for run in args.run], Path(args.manifest), Path(args.out))
    except (EnsembleError, ManifestError, FileNotFoundError, KeyError) as error:
        logger.error("ensemble failed: %s", error)
        return 2
    return 0
