"""`cxr predict PATH...`: classify files by path with the bundled (or a chosen) ONNX model, no server.

Uses the service's decoder, input-domain check and preprocessing, so a file gets the same answer here as
from `/v1/classify`. An image the check finds is not a frontal chest radiograph is reported as refused
and not classified, unless `--domain-policy flag`; a refusal is an answer, not an error. The table gives
the reasons, each naming the score that failed and the card's threshold; `--format jsonl` has the same
as `domain.failed` (check, score, threshold, threshold_name, rule), as the service's 422 does.

Exit status: 0 every file was read (classified or refused); 1 at least one file could not be read or
decoded (a one-line error on stderr; the other files are still processed); 2 the model could not be loaded.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import cv2

from service.errors import CxrError
from service.imaging.decode import decode_file
from service.imaging.overlay import cam_overlay
from service.inference.decision import NOTICE, label_for
from service.inference.model import ModelIntegrityError, OnnxModel, load_default

logger = logging.getLogger(__name__)


def classify_path(
    model: OnnxModel, path: str, heatmap_dir: Path | None = None, *, domain_policy: str = "refuse"
) -> dict[str, Any]:
    """One file -> the result record (`file`, `label`, `probabilities`, `threshold`, `model`, `domain`, ...);
    an image the input-domain check refuses gets `refused` (the reasons) instead of a label."""
    decoded = decode_file(path)
    tensor, geometry, domain = model.prepare(decoded)
    flags = dict(decoded.flags)
    if domain.flag is not None:
        flags["domain"] = domain.flag
    reference = {"name": model.name, "version": model.version, "sha256": model.sha256}
    if domain.verdict == "out" and domain_policy == "refuse":
        return {
            "file": path,
            "refused": f"not a frontal chest radiograph: {domain.summary}",
            "model": reference,
            "domain": domain.to_dict(),
            **({"flags": flags} if flags else {}),
        }
    probabilities, cams = model.run(tensor[None])
    scores = {label: float(probabilities[0, i]) for i, label in enumerate(model.card.labels)}
    label = label_for(probabilities[0], model.card)
    record: dict[str, Any] = {
        "file": path,
        "label": label,
        "probabilities": scores,
        "threshold": model.card.threshold,
        "model": reference,
        "lung_crop": geometry.lung_crop,
        "domain": domain.to_dict(),
        **({"flags": flags} if flags else {}),
    }
    if heatmap_dir is not None and cams is not None:
        heatmap_dir.mkdir(parents=True, exist_ok=True)
        target = heatmap_dir / f"{Path(path).stem}_cam.png"
        cv2.imwrite(str(target), cam_overlay(decoded.pixels, cams[0], geometry))
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
    parser.add_argument(
        "--domain-policy",
        choices=["refuse", "flag"],
        default="refuse",
        help="an image that is not a frontal chest radiograph: refuse it (default) or classify and flag it",
    )
    parser.epilog = (
        "exit status: 0 every file was read (classified, or refused as not a frontal chest radiograph); "
        "1 at least one file could not be read or decoded; 2 the model could not be loaded."
    )


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
            record = classify_path(model, path, heatmap_dir, domain_policy=args.domain_policy)
        except (CxrError, OSError) as error:
            failed += 1
            message = error.detail if isinstance(error, CxrError) else (error.strerror or str(error))
            print(f"cxr predict: {path}: {message}", file=sys.stderr)  # noqa: T201 - CLI output
            continue
        if args.format == "jsonl":
            out.write(json.dumps(record) + "\n")
        elif "refused" in record:
            out.write(f"{'refused':<10} {'-':>10}  {path}  ({record['refused']})\n")
        else:
            note = record.get("flags", {}).get("domain")  # a corrected film, or a warning
            out.write(
                f"{record['label']:<10} {record['probabilities'][model.card.positive_label]:>10.4f}  {path}"
                + (f"  ({note})" if note else "")
                + "\n"
            )
        out.flush()
    return 1 if failed else 0
