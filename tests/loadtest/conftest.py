"""Fixtures for the load-test smoke tests: the tiny real ONNX model and a folder of synthetic X-rays in
every format the locustfile mixes (PNG, JPEG, DICOM), so the tests need no shared data."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.images import synthetic_samples
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
