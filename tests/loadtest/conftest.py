"""Fixtures for the load-test smoke tests: the tiny real ONNX model, a folder of synthetic X-rays in every
format the locustfile mixes (PNG, JPEG, DICOM), and colour pictures every model's input-domain check
refuses, so the tests need no shared data."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from loadtest.images import Sample, synthetic_samples
from tests.support.tinymodel import make_tiny_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The version directory of a tiny model in its own repository."""
    return make_tiny_model(tmp_path_factory.mktemp("repo") / "models")


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for sample in synthetic_samples():
        (folder / sample.name).write_bytes(sample.data)
    (folder / "notes.txt").write_text("not an image: the loader must skip it\n")
    return folder


def colour_samples() -> list[Sample]:
    """Two JPEGs and two PNGs of smooth colour fields: refused by the colour rule of the input-domain check
    (more than 10 % coloured pixels), whatever the view model makes of them. The synthetic X-rays are no
    use for "the service refuses everything": they are drawn to look like a chest's broad structure, and
    the bundled view model (trained with ward films) accepts the grayscale ones."""
    samples = []
    for index, fmt in enumerate(["jpeg", "jpeg", "png", "png"]):
        height, width = 1200 + 100 * index, 1000
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        bgr = np.stack([255 * xs / width, 255 * ys / height, np.full_like(xs, 60.0 * index)], axis=-1).astype(
            np.uint8
        )
        ok, encoded = cv2.imencode(".jpg" if fmt == "jpeg" else ".png", bgr)
        assert ok
        samples.append(Sample(f"colour-{index}.{fmt}", encoded.tobytes(), fmt, width, height))
    return samples


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("colour")
    for sample in colour_samples():
        (folder / sample.name).write_bytes(sample.data)
    return folder
