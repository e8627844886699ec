"""`cxr evaluate-shortcuts` (export.shortcuts): the counterfactual check catches a model that reads devices."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from export.dataset import Row
from export.shortcuts import acceptance, measure, summarize
from service.imaging.input_check import DomainVerdict
from service.imaging.pixels import DecodedImage
from service.imaging.preprocess import PreprocessSpec
from tests.support.tinymodel import blob_image


def record(patient: str, clean_p: float, p: float | None, *, threshold: float = 0.5) -> dict[str, object]:
    label = None if p is None else ("covid" if p >= threshold else "non-covid")
    return {
        "file": patient,
        "patient": patient,
        "covid": False,
        "variant": "devices",
        "clean_p": clean_p,
        "clean_label": "covid" if clean_p >= threshold else "non-covid",
        "p": p,
        "label": label,
        "refused": p is None,
    }


def test_summary_counts_flips_out_of_copies_that_had_the_other_label() -> None:
    records = [
        record("a", 0.2, 0.7),  # flips to covid
        record("b", 0.2, 0.25),
        record("c", 0.3, None),  # refused
        record("d", 0.8, 0.9),  # already covid: not eligible
    ]
    result = summarize(records, towards_covid=True)
    assert result["copies"] == 4 and result["eligible"] == 3
    assert result["flipped_of_eligible"]["value"] == pytest.approx(1 / 3)
    assert result["flipped"]["value"] == pytest.approx(1 / 4)
    assert result["refused"]["value"] == pytest.approx(1 / 4)
    assert result["median_change"]["value"] == pytest.approx(0.1)  # of 0.5, 0.05, 0.1 (refused left out)
    ci = result["flipped_of_eligible"]["ci"]
    assert ci is not None and ci[0] <= 1 / 3 <= ci[1]


def test_acceptance_names_what_fails() -> None:
    good = {
        "copies": 10,
        "direction": "to covid",
        "flipped_of_eligible": {"value": 0.01},
        "median_change": {"value": 0.0},
    }
    bad = {
        "copies": 10,
        "direction": "to covid",
        "flipped_of_eligible": {"value": 0.2},
        "median_change": {"value": 0.05},
    }
    report = {
        "variants": {"devices": {"non-covid": bad, "covid": good}, "text": {"non-covid": good, "covid": good}}
    }
    failures = acceptance(report)
    assert len(failures) == 2 and all(f.startswith("devices, non-covid") for f in failures)
    report["variants"]["devices"]["non-covid"] = good
    assert acceptance(report) == []


class StubModel:
    """Stands in for OnnxModel in `measure`: p(covid) from the image as `score` reads it; refuses an
    image whose mean is above `refuse_above` (a stand-in for the input check)."""

    positive_index = 1

    def __init__(self, score: Callable[[np.ndarray], float], refuse_above: float = 255.0) -> None:
        self.score = score
        self.refuse_above = refuse_above
        self.spec = PreprocessSpec(input_size=32, lung_crop=False)
        self.segmenter = None
        self.card = SimpleNamespace(threshold=0.5, positive_label="covid")

    def prepare(self, image: DecodedImage) -> tuple[np.ndarray, None, DomainVerdict]:
        pixels = image.pixels
        verdict = DomainVerdict("out" if pixels.mean() > self.refuse_above else "in")
        return pixels.astype(np.float32), None, verdict

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, None]:
        p = self.score(batch[0])
        return np.array([[1 - p, p]]), None


def rows(tmp_path: Path, count: int = 6) -> list[Row]:
    out = []
    for index in range(count):
        path = tmp_path / f"n{index}.png"
        cv2.imwrite(str(path), blob_image((360, 320), centre=None, background=90, seed=index))
        out.append(Row(path, path.name, "normal", "s", f"p{index // 2}", "AP"))
    return out


def test_a_model_that_reads_bright_shapes_fails_the_device_check(tmp_path: Path) -> None:
    bright = StubModel(lambda image: float(min(1.0, 0.3 + 20 * np.mean(image > 200))))
    report = measure(bright, rows(tmp_path), copies=2, seed=0)  # type: ignore[arg-type]
    devices = report["variants"]["devices"]["non-covid"]
    assert devices["copies"] == 12 and devices["patients"] == 3
    assert devices["median_change"]["value"] > 0.02
    assert any(f.startswith("devices, non-covid") for f in acceptance(report))
    json.dumps(report)  # what --update-card and shortcuts.json hold


def test_a_model_blind_to_what_lies_on_the_film_passes_and_refusals_are_counted(tmp_path: Path) -> None:
    blind = StubModel(lambda image: 0.2, refuse_above=95.0)
    report = measure(blind, rows(tmp_path), copies=2, seed=0)  # type: ignore[arg-type]
    assert acceptance(report) == []
    devices = report["variants"]["devices"]["non-covid"]
    assert devices["median_change"]["value"] == 0.0 and devices["flipped_of_eligible"]["value"] == 0.0
    assert devices["refused"]["value"] > 0  # bright devices push some copies over the stub's limit
