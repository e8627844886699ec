"""`cxr evaluate`: measure an exported ONNX model on a manifest through the service's own decode and
preprocessing code (so what is measured is what is served).

Writes `metrics.json` (AUROC with 95% bootstrap CI, accuracy, sensitivity, specificity, PPV, NPV, F1 at
the model's threshold, ECE, confusion matrix, counts; the same per `source` and per origin, and the
within-source AUROC where a source has both classes), `predictions.csv`, `roc.png`,
`confusion_matrix.png`, `classification_report.txt` and `cam_grid.png`. `--split test` reads the split
stored beside the model; `--split all` evaluates every row (external sets).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from export.dataset import ManifestError, Row, read_manifest, read_split
from export.metrics import by_group, origin_gap_with_ci, summarize
from service.errors import CxrError
from service.imaging.decode import decode_file
from service.imaging.input_check import DomainVerdict
from service.imaging.overlay import cam_overlay
from service.imaging.preprocess import Geometry
from service.inference.decision import NOTICE as RESEARCH_USE
from service.inference.decision import label_for_score
from service.inference.model import OnnxModel, load_default

logger = logging.getLogger(__name__)

NOTICE = f"{RESEARCH_USE} Metrics describe this data set, not clinical performance."


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True)
    parser.add_argument(
        "--model", default=None, help="model name, version folder or model.onnx (default: bundled)"
    )
    parser.add_argument("--split", choices=["test", "val", "train", "all"], default="test")
    parser.add_argument("--out", required=True)
    parser.add_argument("--update-card", action="store_true", help="record the results in the model's card")


@dataclass
class Scored:
    row: Row
    score: float
    cam: np.ndarray | None
    pixels: np.ndarray
    geometry: Geometry
    domain: DomainVerdict


def score_rows(
    model: OnnxModel, rows: Sequence[Row], batch_size: int = 32
) -> tuple[list[Scored], list[dict[str, str]]]:
    """Decode + preprocess in a small pool, infer in batches; unreadable files become error records."""
    scored: list[Scored] = []
    errors: list[dict[str, str]] = []

    def prepare(row: Row) -> tuple[Row, Any]:
        try:
            decoded = decode_file(str(row.path))
            return row, (decoded.pixels, *model.prepare(decoded))  # with the input-domain check
        except (CxrError, OSError) as error:
            return row, error

    with ThreadPoolExecutor(max_workers=2) as pool:
        prepared = list(pool.map(prepare, rows))
    ready = [(row, value) for row, value in prepared if not isinstance(value, Exception)]
    for row, value in prepared:
        if isinstance(value, Exception):
            errors.append({"file": row.file, "error": f"{type(value).__name__}: {value}"})
    for start in range(0, len(ready), batch_size):
        chunk = ready[start : start + batch_size]
        batch = np.stack([tensor for _, (_, tensor, _, _) in chunk])
        probabilities, cams = model.run(batch)
        for index, (row, (pixels, _, geometry, verdict)) in enumerate(chunk):
            cam = cams[index] if cams is not None else None
            scored.append(
                Scored(row, float(probabilities[index, model.positive_index]), cam, pixels, geometry, verdict)
            )
    return scored, errors


def select_rows(rows: list[Row], split_name: str, model: OnnxModel) -> list[Row]:
    if split_name == "all":
        return rows
    split_file = model.directory / "split.csv"
    if not split_file.is_file():
        raise ManifestError(
            f"{split_file} not found: use --split all for a manifest the model has no split for"
        )
    split = read_split(split_file)
    missing = [r.file for r in rows if r.file not in split]
    if missing:
        raise ManifestError(
            f"{len(missing)} manifest rows are not in the model's split (e.g. {missing[0]}); use --split all"
        )
    return [r for r in rows if split[r.file] == split_name]


def evaluate(model: OnnxModel, rows: Sequence[Row], out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    scored, errors = score_rows(model, rows)
    if not scored:
        raise ManifestError("no image in the selection could be read")
    truth = np.array([s.row.label == model.card.positive_label for s in scored])
    scores = np.array([s.score for s in scored])
    threshold = model.card.threshold
    sources = [s.row.source for s in scored]
    origins = [s.row.origin for s in scored]
    patients = [s.row.group for s in scored]
    per_source = by_group(truth, scores, sources, threshold, patients=patients)
    per_origin = by_group(truth, scores, origins, threshold, patients=patients)
    within = {name: value for name, value in per_origin.items() if value["positives"] and value["negatives"]}
    metrics: dict[str, Any] = {
        "notice": NOTICE,
        "model": {"name": model.name, "version": model.version, "sha256": model.sha256},
        "threshold": threshold,
        "overall": summarize(truth, scores, threshold, patients=patients),
        "per_source": per_source,
        "per_origin": per_origin,
        "within_source": within,
        "origin_gap": origin_gap_with_ci(
            truth,
            np.array(origins),
            np.array([s.row.label for s in scored]),
            scores,
            np.array(patients),
        ),
        "per_label": {
            label: {
                "n": int(sum(1 for s in scored if s.row.label == label)),
                "positive_rate": float(
                    np.mean([s.score >= threshold for s in scored if s.row.label == label])
                ),
            }
            for label in sorted({s.row.label for s in scored})
        },
        "domain": _domain_summary(scored),
        "errors": errors,
        "seconds": round(time.monotonic() - started, 1),
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    with (out / "predictions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "label", "source", "score", "predicted", "lung_crop", "domain"])
        for s in scored:
            writer.writerow(
                [
                    s.row.file,
                    s.row.label,
                    s.row.source,
                    f"{s.score:.6f}",
                    label_for_score(s.score, model.card),
                    s.geometry.lung_crop,
                    s.domain.verdict,
                ]
            )
    _write_report(metrics, out / "classification_report.txt")
    _plot_roc(truth, scores, origins, metrics, out / "roc.png")
    _plot_confusion(metrics["overall"]["confusion_matrix"]["matrix"], out / "confusion_matrix.png")
    _plot_reliability(truth, scores, out / "reliability.png")
    if any(s.cam is not None for s in scored):
        cam_grid(scored, out / "cam_grid.png")
    return metrics


def _domain_summary(scored: Sequence[Scored]) -> dict[str, Any]:
    """Input-domain verdicts on an evaluation set of real films: every film is still scored (the metrics
    stay comparable across versions), and the films the service would refuse or correct are named."""
    verdicts = {"in": 0, "corrected": 0, "out": 0}
    named: list[dict[str, str]] = []
    for s in scored:
        domain = s.domain
        verdicts[domain.verdict] += 1
        if domain.verdict != "in":
            named.append({"file": s.row.file, "verdict": domain.verdict, "reasons": domain.summary})
    return {"verdicts": verdicts, "not_in": named}


def _plot_reliability(truth: np.ndarray, scores: np.ndarray, path: Path, bins: int = 10) -> None:
    """Reliability diagram: observed covid rate against mean predicted p(covid) in equal-width bins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.linspace(0, 1, bins + 1)
    index = np.clip(np.digitize(scores, edges[1:-1]), 0, bins - 1)
    centres, observed, counts = [], [], []
    for b in range(bins):
        members = index == b
        if members.any():
            centres.append(float(scores[members].mean()))
            observed.append(float(truth[members].mean()))
            counts.append(int(members.sum()))
    figure, axis = plt.subplots(figsize=(4.5, 4.5))
    axis.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    axis.plot(centres, observed, "o-")
    for x, y, n in zip(centres, observed, counts, strict=True):
        axis.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    axis.set_xlabel("mean predicted p(covid)")
    axis.set_ylabel("observed covid rate")
    axis.set_title("Reliability (10 bins; n per bin), research use only", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _write_report(metrics: dict[str, Any], path: Path) -> None:
    lines = [NOTICE, "", f"threshold {metrics['threshold']:.4f}", ""]
    header = f"{'set':<40} {'n':>5} {'pos':>4} {'AUROC':>6} {'95% CI':>15} {'sens':>6} {'spec':>6} {'PPV':>6} {'NPV':>6} {'F1':>6}"
    lines.append(header)

    def fmt(value: Any) -> str:
        return f"{value:6.3f}" if isinstance(value, float) else f"{'-':>6}"

    def line(name: str, m: dict[str, Any]) -> str:
        ci = f"[{m['auroc_ci95'][0]:.3f}, {m['auroc_ci95'][1]:.3f}]" if m["auroc_ci95"] else "-"
        return (
            f"{name[:40]:<40} {m['n']:>5} {m['positives']:>4} {fmt(m['auroc'])} {ci:>15} {fmt(m['sensitivity'])} "
            f"{fmt(m['specificity'])} {fmt(m['ppv'])} {fmt(m['npv'])} {fmt(m['f1'])}"
        )

    lines.append(line("overall", metrics["overall"]))
    for name, m in metrics["per_source"].items():
        lines.append(line(f"source {name}", m))
    for name, m in metrics["within_source"].items():
        lines.append(line(f"within-source {name}", m))
    gap = metrics.get("origin_gap") or {}
    if gap.get("value") is not None:
        ci = gap["ci95"]
        lines += [
            "",
            f"origin gap {gap['value']:.3f}"
            + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")
            + f" ({gap['covid_origin_negatives']} non-covid images from covid-bearing origins vs "
            f"{gap['other_negatives']} of the same labels from elsewhere; 0.5 = no trace of the origin)",
        ]
    lines += ["", f"errors: {len(metrics['errors'])}"]
    path.write_text("\n".join(lines) + "\n")


def _plot_roc(
    truth: np.ndarray, scores: np.ndarray, origins: Sequence[str], metrics: dict[str, Any], path: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def curve(t: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        thresholds = np.r_[np.inf, np.unique(s)[::-1]]
        tpr = np.array([(s[t] >= x).mean() for x in thresholds])
        fpr = np.array([(s[~t] >= x).mean() for x in thresholds])
        return fpr, tpr

    figure, axis = plt.subplots(figsize=(5, 5))
    fpr, tpr = curve(truth, scores)
    overall = metrics["overall"]
    axis.plot(fpr, tpr, label=f"all (AUROC {overall['auroc']:.3f})")
    origins_array = np.asarray(origins)
    for name, m in metrics["within_source"].items():
        keep = origins_array == name
        fpr, tpr = curve(truth[keep], scores[keep])
        axis.plot(fpr, tpr, label=f"within {name} (AUROC {m['auroc']:.3f})")
    axis.plot([0, 1], [0, 1], "k:", linewidth=0.8)
    axis.set_xlabel("1 - specificity")
    axis.set_ylabel("sensitivity")
    axis.set_title("ROC, covid vs non-covid (research use only)", fontsize=9)
    axis.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_confusion(matrix: list[list[int]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4, 3.6))
    axis.imshow(matrix, cmap="Blues")
    for i in range(2):
        for j in range(2):
            axis.text(j, i, str(matrix[i][j]), ha="center", va="center", fontsize=12)
    axis.set_xticks([0, 1], ["non-covid", "covid"])
    axis.set_yticks([0, 1], ["non-covid", "covid"])
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    axis.set_title("Confusion matrix (research use only)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def cam_grid(scored: Sequence[Scored], path: Path, per_cell: int = 4, tile: int = 160) -> None:
    """A grid of CAM overlays: one row per (origin, label), `per_cell` images each, score in the corner."""
    cells: dict[tuple[str, str], list[Scored]] = {}
    for s in sorted(scored, key=lambda s: s.row.file):
        cells.setdefault((s.row.origin, s.row.label), []).append(s)
    rows = []
    for (origin, label), members in sorted(cells.items()):
        tiles = []
        for s in members[:per_cell]:
            image = (
                cv2.resize(cam_overlay(s.pixels, s.cam, s.geometry), (tile, tile))
                if s.cam is not None
                else np.zeros((tile, tile, 3), np.uint8)
            )
            cv2.putText(image, f"{s.score:.2f}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1)
            tiles.append(image)
        tiles += [np.zeros((tile, tile, 3), np.uint8)] * (per_cell - len(tiles))
        caption = np.zeros((tile, 150, 3), np.uint8)
        cv2.putText(caption, origin, (4, tile // 2 - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
        cv2.putText(caption, label, (4, tile // 2 + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1)
        rows.append(np.hstack([caption, *tiles]))
    cv2.imwrite(str(path), np.vstack(rows))


def update_card(
    model: OnnxModel, metrics: dict[str, Any], split_name: str, out: Path, manifest: Path
) -> None:
    """Record evaluation results (and the CAM grid) in card.json, then re-render card.md."""
    from export.card import render_card

    card_path = model.directory / "card.json"
    card = json.loads(card_path.read_text())
    evaluation = card.setdefault("evaluation", {})
    evaluation[split_name] = {
        "manifest": manifest.name,
        "command": f"cxr evaluate --manifest {manifest} --model {model.directory} --split {split_name} --out {out}",
        **{k: v for k, v in metrics.items() if k not in ("errors", "notice")},
        "errors": len(metrics["errors"]),
    }
    for name in ("cam_grid.png", "roc.png", "confusion_matrix.png", "reliability.png"):
        if (out / name).is_file():
            (model.directory / f"{split_name}_{name}").write_bytes((out / name).read_bytes())
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    (model.directory / "card.md").write_text(render_card(card))


def main(args: argparse.Namespace) -> int:
    try:
        model = load_default(args.model)
        rows = select_rows(read_manifest(args.manifest), args.split, model)
        metrics = evaluate(model, rows, Path(args.out))
    except (ManifestError, FileNotFoundError) as error:
        logger.error("%s", error)
        return 2
    overall = metrics["overall"]
    ci = overall["auroc_ci95"]
    logger.info(
        "%s: n=%d AUROC %s %s sens %.3f spec %.3f (%d unreadable)",
        args.split,
        overall["n"],
        f"{overall['auroc']:.4f}" if overall["auroc"] is not None else "n/a",
        f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "",
        overall["sensitivity"] or 0,
        overall["specificity"] or 0,
        len(metrics["errors"]),
    )
    for name, m in metrics["within_source"].items():
        logger.info("within %s: AUROC %.4f (n=%d, %d covid)", name, m["auroc"], m["n"], m["positives"])
    if args.update_card:
        update_card(model, metrics, args.split, Path(args.out), Path(args.manifest))
    return 1 if metrics["errors"] else 0
