"""The class activation map is registered, not just drawn: for a synthetic X-ray with a bright blob (what
the tiny model detects) inside uniform borders that preprocessing trims, the API's heatmap peaks on the
blob in the uploaded image's coordinates, and `cxr predict --heatmap` draws its overlay from the same CAM."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from tests.support.app import serve, settings_for
from tests.support.serverproc import ROOT
from tests.support.tinymodel import blob_image, encode, make_tiny_model

pytestmark = pytest.mark.anyio

WIDTH, HEIGHT = 640, 480
BORDER_LEFT, BORDER_TOP = 150, 110  # black film edges: trimmed, so the model's crop is offset
BLOB = (220, 150)  # near the crop's top-left corner, where a CAM stretched over the whole image lands far off
BLOB_RADIUS = 40


def _bordered_blob() -> np.ndarray:
    image = blob_image(size=(HEIGHT, WIDTH), centre=None, seed=7)
    cv2.circle(image, BLOB, BLOB_RADIUS, 235, thickness=-1)
    image[:BORDER_TOP, :] = 0
    image[:, :BORDER_LEFT] = 0
    return image


@pytest.fixture
def fine_model_dir(tmp_path: Path) -> Path:
    """The tiny model at 64 px input: a 16x16 CAM, fine enough to locate a blob of 80 px in 640."""
    repository = tmp_path / "models"
    make_tiny_model(repository, input_size=64)
    return repository


def _levels(heatmap: dict[str, Any]) -> np.ndarray:
    png = np.frombuffer(base64.b64decode(heatmap["data"]), np.uint8)
    return cv2.imdecode(png, cv2.IMREAD_GRAYSCALE)


async def test_cam_peaks_on_the_blob(fine_model_dir: Path) -> None:
    image = _bordered_blob()
    async with serve(settings_for(fine_model_dir)) as client:
        response = await client.post(
            "/v1/classify",
            params={"heatmap": "true"},
            content=encode(image, ".jpg"),
            headers={"Content-Type": "image/jpeg"},
        )
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    heatmap = result["heatmap"]
    levels = _levels(heatmap)
    assert (
        levels.shape == (heatmap["height"], heatmap["width"]) == (320, 427)
    )  # shorter side 320, aspect kept
    scale_x, scale_y = WIDTH / heatmap["width"], HEIGHT / heatmap["height"]

    row, column = np.unravel_index(int(np.argmax(levels)), levels.shape)
    peak = ((column + 0.5) * scale_x, (row + 0.5) * scale_y)  # pixel centre, in the uploaded image
    distance = float(np.hypot(peak[0] - BLOB[0], peak[1] - BLOB[1]))
    assert distance < BLOB_RADIUS, f"CAM peak at {peak}, blob at {BLOB}"
    # Outside the crop (the trimmed borders) the map is empty: it was placed on the crop, not stretched.
    assert levels[:, : int(BORDER_LEFT / scale_x) - 1].max() == 0
    assert levels[: int(BORDER_TOP / scale_y) - 1, :].max() == 0
    assert result["probabilities"]["covid"] > 0.0


async def test_predict_overlay_uses_the_same_cam_as_the_api(fine_model_dir: Path, tmp_path: Path) -> None:
    source = tmp_path / "bordered-blob.png"
    source.write_bytes(encode(_bordered_blob()))
    heatmaps = tmp_path / "heatmaps"
    version_dir = fine_model_dir / "tiny" / "1"
    command = [sys.executable, "-m", "cxr", "predict", str(source), "--model", str(version_dir)]
    command += ["--heatmap", str(heatmaps), "--format", "jsonl"]
    predicted = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert predicted.returncode == 0, predicted.stderr
    record = json.loads(predicted.stdout)
    drawn = cv2.imread(record["heatmap"], cv2.IMREAD_COLOR)

    async with serve(settings_for(fine_model_dir)) as client:
        data = source.read_bytes()
        answer = await client.post("/v1/classify", params={"heatmap": "true"}, files={"file": data})
        decoded = await client.post("/v1/decoded", files={"file": data})
    assert answer.status_code == 200 and decoded.status_code == 200
    result = answer.json()["results"][0]
    assert record["probabilities"] == pytest.approx(result["probabilities"], abs=1e-6)

    # Rebuild predict's overlay (export.evaluate.overlay: jet at 45 % over the decoded image) from what the
    # API returns: both take their levels from service.imaging.preprocess.cam_levels, so it matches exactly.
    # (Before they shared it, predict dropped negative CAM before upsampling and the API after: the
    # overlays differed by up to 85 grey levels along the edges of the activated regions.)
    base = cv2.imdecode(np.frombuffer(decoded.content, np.uint8), cv2.IMREAD_GRAYSCALE)
    colored = cv2.applyColorMap(_levels(result["heatmap"]), cv2.COLORMAP_JET)
    expected = cv2.addWeighted(cv2.cvtColor(base, cv2.COLOR_GRAY2BGR), 0.55, colored, 0.45, 0)
    assert drawn.shape == expected.shape
    # predict also outlines the model's crop box in white, which jet blended over grey never produces.
    outline = (drawn == 255).all(axis=2)
    assert outline.any()
    assert np.array_equal(drawn[~outline], expected[~outline])
