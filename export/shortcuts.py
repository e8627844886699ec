"""`cxr evaluate-shortcuts`: does a device or burned-in text change the answer? A counterfactual test.

On held-out films (the test split by default), each film is classified as it is and again with, painted
on it by export.icu's HELD_OUT style (other curves, widths, positions, shapes and fonts than training
draws with, so the figure measures invariance rather than memory of our own drawings):

- `devices`: tubes, lines, ECG wires and electrodes, pacemaker, port, clips, sternal wires;
- `text`: burned-in words, side markers and times;
- `ward film`: devices, text, tilt inside collimation borders and portable exposure together (reported,
  not an acceptance figure: exposure and tilt change the image itself, not only what lies on it).

Every copy goes through the service's own path (PNG bytes -> decode -> `OnnxModel.prepare`, input check
included -> inference), so a copy the check refuses counts as refused, never as scored. Per label it
reports the median change of p(covid), the share of copies whose label flips (towards COVID for
non-COVID films, away from it for COVID films; of all copies, and of copies whose clean film had the
other label), and the share refused, with 95 % CIs from resampling patients. `--update-card` records it.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from export.dataset import Row, read_manifest, read_split
from export.icu import HELD_OUT, Recipe, burn_text, icu_film, paint_devices
from export.metrics import bootstrap_ci
from service.errors import CxrError
from service.imaging.decode import decode, decode_file
from service.imaging.preprocess import Box, locate
from service.inference.decision import NOTICE
from service.inference.model import OnnxModel, load_default

logger = logging.getLogger(__name__)

Painter = Callable[[np.ndarray, Box, np.random.Generator], np.ndarray]

VARIANTS: dict[str, Painter] = {
    "devices": lambda image, box, rng: paint_devices(image, box, rng, HELD_OUT),
    "text": lambda image, box, rng: burn_text(image, rng, HELD_OUT),
    "ward film": lambda image, box, rng: icu_film(image, box, rng, HELD_OUT, Recipe(text=1.0, geometry=1.0))[
        0
    ],
}
ACCEPTANCE = ("devices", "text")
"""The variants the acceptance rule reads: nothing of the patient changes, only what lies on the film."""


def add_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", required=True, help="shared/data/cxr/manifest.csv")
    parser.add_argument("--model", default=None, help="model version folder (default: bundled)")
    parser.add_argument("--split", choices=["test", "val", "all"], default="test")
    parser.add_argument("--copies", type=int, default=3, help="painted copies per film and variant")
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--out", required=True)
    parser.add_argument("--update-card", action="store_true", help="record the results in the model's card")
    parser.add_argument(
        "--before",
        default=None,
        help="shortcuts.json of an earlier model on the same films, summarised beside this one in the card",
    )


@dataclass(frozen=True)
class Outcome:
    """One image through the service path: p(covid) and label, or refused (None) / unreadable."""

    probability: float | None
    label: str | None
    refused: bool


def classify(model: OnnxModel, image: np.ndarray) -> Outcome:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    try:
        decoded = decode(encoded.tobytes())
    except CxrError:
        return Outcome(None, None, True)
    tensor, _, verdict = model.prepare(decoded)
    if verdict.verdict == "out":
        return Outcome(None, None, True)
    probabilities, _ = model.run(tensor[None])
    p = float(probabilities[0, model.positive_index])
    return Outcome(p, model.card.positive_label if p >= model.card.threshold else "non-covid", False)


def measure(model: OnnxModel, rows: list[Row], copies: int, seed: int) -> dict[str, Any]:
    """Per variant and label group, the changes the painted copies make (see the module docstring)."""
    rng = np.random.default_rng(seed)
    records: list[dict[str, Any]] = []
    for row in rows:
        pixels = decode_file(str(row.path)).pixels
        box = locate(pixels, model.spec, model.segmenter).box
        clean = classify(model, pixels)
        for variant, paint in VARIANTS.items():
            for _ in range(copies):
                copy = classify(model, paint(pixels, box, rng))
                records.append(
                    {
                        "file": row.file,
                        "patient": row.group,
                        "covid": row.label == "covid",
                        "variant": variant,
                        "clean_p": clean.probability,
                        "clean_label": clean.label,
                        "p": copy.probability,
                        "label": copy.label,
                        "refused": copy.refused,
                    }
                )
    report: dict[str, Any] = {"variants": {}, "films": len(rows), "copies": copies, "style": HELD_OUT.name}
    for variant in VARIANTS:
        report["variants"][variant] = {
            group: summarize(
                [r for r in records if r["variant"] == variant and r["covid"] == (group == "covid")],
                towards_covid=group != "covid",
            )
            for group in ("non-covid", "covid")
        }
    return report


def summarize(records: list[dict[str, Any]], *, towards_covid: bool) -> dict[str, Any]:
    """Median change of p(covid), label flips and refusals over copies whose clean film was classified;
    CIs resample patients."""
    kept = [r for r in records if r["clean_p"] is not None]
    if not kept:
        return {"copies": 0}
    bad = "covid" if towards_covid else "non-covid"
    refused = np.array([r["refused"] for r in kept])
    delta = np.array([(r["p"] - r["clean_p"]) if r["p"] is not None else np.nan for r in kept])
    flipped = np.array([r["label"] == bad for r in kept]) & np.array([r["clean_label"] != bad for r in kept])
    eligible = np.array([r["clean_label"] != bad for r in kept])
    patients = np.array([r["patient"] for r in kept])
    strata = np.zeros(len(kept))

    def median_delta(index: np.ndarray) -> float | None:
        values = delta[index][~np.isnan(delta[index])]
        return float(np.median(values)) if len(values) else None

    def flip_share(index: np.ndarray) -> float | None:
        return float(flipped[index].mean()) if len(index) else None

    def flip_of_eligible(index: np.ndarray) -> float | None:
        return float(flipped[index].sum() / eligible[index].sum()) if eligible[index].any() else None

    def refused_share(index: np.ndarray) -> float | None:
        return float(refused[index].mean()) if len(index) else None

    def with_ci(statistic: Callable[[np.ndarray], float | None]) -> dict[str, Any]:
        value = statistic(np.arange(len(kept)))
        ci = bootstrap_ci(statistic, strata, patients, resamples=1000)
        return {"value": value, "ci": list(ci) if ci else None}

    return {
        "copies": len(kept),
        "films": len({r["file"] for r in kept}),
        "patients": len(set(patients)),
        "direction": f"to {bad}",
        "median_change": with_ci(median_delta),
        "mean_change": float(np.nanmean(delta)) if not np.isnan(delta).all() else None,
        "flipped": with_ci(flip_share),
        "flipped_of_eligible": with_ci(flip_of_eligible),
        "eligible": int(eligible.sum()),
        "refused": with_ci(refused_share),
    }


def acceptance(report: dict[str, Any], max_flip: float = 0.05, max_median: float = 0.02) -> list[str]:
    """What breaks the rule (issue 27): at most 5 % of copies flip (of those whose clean film had the
    other label), and, for non-COVID films, the median change of p(covid) is at most 0.02."""
    failures = []
    for variant in ACCEPTANCE:
        for group, result in report["variants"][variant].items():
            if not result.get("copies"):
                continue
            flip = result["flipped_of_eligible"]["value"]
            if flip is not None and flip > max_flip:
                failures.append(
                    f"{variant}, {group}: {flip:.1%} flip {result['direction']} (limit {max_flip:.0%})"
                )
            median = result["median_change"]["value"]
            if group == "non-covid" and median is not None and median > max_median:
                failures.append(
                    f"{variant}, {group}: median change of p(covid) {median:+.3f} (limit {max_median})"
                )
    return failures


def brief(report: dict[str, Any]) -> list[str]:
    """One phrase per acceptance variant and label: median change, flips, refusals."""
    phrases = []
    for variant in ACCEPTANCE:
        for group, r in report["variants"][variant].items():
            if r.get("copies"):
                phrases.append(
                    f"{variant} on {group} films: median change {r['median_change']['value']:+.3f}, "
                    f"{r['flipped_of_eligible']['value']:.1%} flipped {r['direction']}, "
                    f"{r['refused']['value']:.1%} refused"
                )
    return phrases


def rows_for(manifest: Path, model: OnnxModel, split: str) -> list[Row]:
    rows = read_manifest(manifest)
    if split == "all":
        return rows
    chosen = read_split(model.directory / "split.csv")
    return [r for r in rows if chosen.get(r.file) == split]


def update_card(model: OnnxModel, report: dict[str, Any]) -> None:
    from export.card import render_card

    card_path = model.directory / "card.json"
    card = json.loads(card_path.read_text())
    card["shortcuts"] = report
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    (model.directory / "card.md").write_text(render_card(card))


def main(args: argparse.Namespace) -> int:
    """`cxr evaluate-shortcuts`: 0 when the acceptance rule holds, 1 when it does not, 2 for bad options."""
    if args.copies < 1:
        logger.error("--copies must be at least 1")
        return 2
    model = load_default(args.model)
    rows = rows_for(Path(args.manifest), model, args.split)
    report = measure(model, rows, args.copies, args.seed)
    report["command"] = "cxr evaluate-shortcuts " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    report["split"] = args.split
    report["model"] = f"{model.name} v{model.version}, model.onnx sha256 {model.sha256[:12]}"
    report["failures"] = acceptance(report)
    if args.before:
        earlier = json.loads(Path(args.before).read_text())
        report["before"] = {"model": earlier.get("model", args.before), "summary": brief(earlier)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "shortcuts.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [NOTICE]
    for variant, groups in report["variants"].items():
        for group, result in groups.items():
            if not result.get("copies"):
                continue
            lines.append(
                f"{variant:10s} {group:9s} copies {result['copies']:4d}  median change {result['median_change']['value']:+.3f}"
                f"  flipped {result['direction']} {result['flipped_of_eligible']['value']:.1%} of {result['eligible']}"
                f"  refused {result['refused']['value']:.1%}"
            )
    for failure in report["failures"]:
        lines.append(f"FAILS: {failure}")
    sys.stdout.write("\n".join(lines) + "\n")
    if args.update_card:
        update_card(model, report)
    return 1 if report["failures"] else 0
