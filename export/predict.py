"""`cxr predict PATH...`: classify files by path with the bundled (or a chosen) ONNX model, no server.

Uses the service's decoder and preprocessing, so a file gets the same answer here as from `/v1/classify`.
A bad file prints a one-line error for that file (on stderr) and makes the exit status 1; the other
files are still classified.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import cv2

from service.decode import decode_file
from service.errors import CxrError
from service.model import ModelIntegrityError, OnnxModel, load_default

logger = logging.getLogger(__name__)

NOTICE = "RESEARCH USE ONLY - not for diagnosis or triage."


def classify_path(model: OnnxModel, path: str, heatmap_dir: Path | None = None) -> dict[str, Any]:
    """One file -> the result record (`file`, `label`, `probabilities`, `threshold`, `model`, ...)."""
    decoded = decode_file(path)
    tensor, geometry = model.prepare(decoded.pixels)
    probabilities, cams = model.run(tensor[None])
    scores = {label: float(probabilities[0, i]) for i, label in enumerate(model.card.labels)}
    positive = scores[model.card.positive_label]
    if len(model.card.labels) == 2:
        negative = next(label for label in model.card.labels if label != model.card.positive_label)
        label = model.card.positive_label if positive >= model.card.threshold else negative
    else:
        label = max(scores, key=scores.__getitem__)
    record: dict[str, Any] = {
        "file": path,
        "label": label,
        "probabilities": scores,
        "threshold": model.card.threshold,
        "model": {"name": model.name, "version": model.version, "sha256": model.sha256},
        "lung_crop": geometry.lung_crop,
        **({"flags": decoded.flags} if decoded.flags else {}),
    }
    if heatmap_dir is not None and cams is not None:
        from export.evaluate import overlay

        heatmap_dir.mkdir(parents=True, exist_ok=True)
        target = heatmap_dir / f"{Path(path).stem}_cam.png"
        cv2.imwrite(str(target), overlay(decoded.pixels, cams[0], geometry))
        record["heatmap"] = str(target)
    return record


def add_flags(parser: argparse.ArgumentParser) -> None:
    """`cxr predict`'s flags."""
    parser.add_argument("paths", nargs="+", help="PNG, JPEG or DICOM files")
    parser.add_argument(
        "--model", help="model name, version directory, or model.onnx path (default: bundled)"
    )
    parser.add_argument("--format", choices=["table", "jsonl"], default="table")
    parser.add_argument("--heatmap", metavar="DIR", help="write CAM overlay PNGs into DIR")


def main(args: argparse.Namespace) -> int:
    try:
        model = load_default(args.model)
    except (FileNotFoundError, ModelIntegrityError) as error:
        print(f"cxr predict: {error}", file=sys.stderr)  # noqa: T201 - CLI output
        return 2
    heatmap_dir = Path(args.heatmap) if args.heatmap else None
    failed = 0
    out = sys.stdout
    if args.format == "table":
        out.write(f"# {NOTICE} model {model.name} v{model.version}, threshold {model.card.threshold:.4f}\n")
        out.write(f"{'label':<10} {'p(' + model.card.positive_label + ')':>10}  file\n")
    for path in args.paths:
        try:
            record = classify_path(model, path, heatmap_dir)
        except (CxrError, OSError) as error:
            failed += 1
            message = error.detail if isinstance(error, CxrError) else (error.strerror or str(error))
            print(f"cxr predict: {path}: {message}", file=sys.stderr)  # noqa: T201 - CLI output
            continue
        if args.format == "jsonl":
            out.write(json.dumps(record) + "\n")
        else:
            out.write(
                f"{record['label']:<10} {record['probabilities'][model.card.positive_label]:>10.4f}  {path}\n"
            )
        out.flush()
    return 1 if failed else 0
