"""`cxr predict` on the bundled model: a label and probabilities for good files, one-line errors for bad ones."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from service.inference.decision import NOTICE
from service.inference.model import default_repository, find_versions
from tests.support.synthetic import synthetic_xray

pytestmark = pytest.mark.skipif(
    not find_versions(default_repository()), reason="no bundled model under models/"
)


def _cxr(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cxr", *args], capture_output=True, text=True, timeout=120)


def test_predict_png_prints_label_and_probabilities(tmp_path: Path) -> None:
    # A drawn chest is not a radiograph to the bundled model's input-domain check: --domain-policy flag
    # classifies it anyway and says so.
    image = tmp_path / "chest.png"
    cv2.imwrite(str(image), synthetic_xray(np.random.default_rng(0), False, size=256))
    table = _cxr("predict", str(image), "--domain-policy", "flag")
    assert table.returncode == 0, table.stderr
    assert NOTICE in table.stdout  # the one research-use notice (service.inference.decision)
    assert str(image) in table.stdout
    jsonl = _cxr("predict", str(image), "--format", "jsonl", "--domain-policy", "flag")
    record = json.loads(jsonl.stdout)
    assert record["file"] == str(image)
    assert record["label"] in ("covid", "non-covid")
    assert set(record["probabilities"]) == {"covid", "non-covid"}
    assert 0 <= record["threshold"] <= 1
    assert record["domain"]["verdict"] == "out" and record["flags"]["domain"].startswith("out: ")


def test_predict_refuses_what_is_not_a_chest_radiograph_and_exits_0(tmp_path: Path) -> None:
    noise = tmp_path / "noise.png"
    cv2.imwrite(str(noise), np.random.default_rng(2).integers(0, 256, (512, 512)).astype(np.uint8))
    table = _cxr("predict", str(noise))
    assert table.returncode == 0, table.stderr  # a refusal is an answer; only unreadable files exit 1
    assert "refused" in table.stdout and "not a frontal chest radiograph" in table.stdout
    record = json.loads(_cxr("predict", str(noise), "--format", "jsonl").stdout)
    assert "label" not in record and record["domain"]["verdict"] == "out" and record["refused"]
    assert "exit status" in _cxr("predict", "--help").stdout


def test_predict_names_the_failed_check_its_score_and_the_cards_threshold(tmp_path: Path) -> None:
    """Issue 27: the table's reason and the jsonl record's domain.failed name what failed, by how much,
    against which threshold of the bundled model's card."""
    version = find_versions(default_repository())[-1]
    card = json.loads((version / "card.json").read_text())["domain"]["thresholds"]
    noise, tiny, colour = tmp_path / "noise.png", tmp_path / "tiny.png", tmp_path / "colour.png"
    cv2.imwrite(str(noise), np.random.default_rng(2).integers(0, 256, (512, 512)).astype(np.uint8))
    cv2.imwrite(str(tiny), np.zeros((40, 60), np.uint8))
    film = synthetic_xray(np.random.default_rng(0), False, size=256)
    cv2.imwrite(str(colour), cv2.applyColorMap(film, cv2.COLORMAP_JET))
    paths = [str(noise), str(tiny), str(colour)]
    table = _cxr("predict", *paths)
    assert table.returncode == 0, table.stderr
    lines = {path: next(line for line in table.stdout.splitlines() if path in line) for path in paths}
    assert f"p(not a radiograph) 1.00, refused above {card['max_not_radiograph']:.2f}" in lines[str(noise)]
    assert f"needs at least {card['min_side']} px on its shorter side (this one has 40)" in lines[str(tiny)]
    assert f"refused above {card['max_colour_fraction']:.0%}" in lines[str(colour)]
    jsonl = _cxr("predict", *paths, "--format", "jsonl")
    records = {record["file"]: record for record in map(json.loads, jsonl.stdout.splitlines())}
    expected = {
        str(noise): ("not_radiograph", "max_not_radiograph", ">"),
        str(tiny): ("shorter_side", "min_side", "<"),
        str(colour): ("colour_fraction", "max_colour_fraction", ">"),
    }
    for path, (check, name, side) in expected.items():
        (failed,) = records[path]["domain"]["failed"]
        assert (failed["check"], failed["threshold_name"]) == (check, name), failed
        assert failed["threshold"] == card[name]
        assert failed["rule"] == f"score {side} threshold refuses"
    assert records[str(tiny)]["domain"]["failed"][0]["score"] == 40


def test_bad_files_get_one_line_errors_and_nonzero_exit(tmp_path: Path) -> None:
    good = tmp_path / "good.png"
    cv2.imwrite(str(good), synthetic_xray(np.random.default_rng(1), True, size=256))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(good.read_bytes()[:60])
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    missing = tmp_path / "missing.png"
    result = _cxr(
        "predict", str(corrupt), str(good), str(text), str(empty), str(missing), "--format", "jsonl"
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 4, errors
    for path in (corrupt, text, empty, missing):
        assert any(str(path) in line for line in errors)
    assert [json.loads(line)["file"] for line in result.stdout.splitlines()] == [str(good)]  # refused or not


def test_evaluate_rejects_a_bad_manifest_with_one_line(tmp_path: Path) -> None:
    result = _cxr("evaluate", "--manifest", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "manifest not found" in result.stderr
